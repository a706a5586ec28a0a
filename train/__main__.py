"""``python -m gcl_zoo_train ...`` and ``torchrun --nproc-per-node N -m gcl_zoo_train ...`` (installed; ``-m train``
in a source checkout): the same as ``gcl-zoo train``."""
import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
