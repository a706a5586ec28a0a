"""``python -m train ...`` and ``torchrun --nproc-per-node N -m train ...``: the same as ``gcl-zoo train``."""
import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
