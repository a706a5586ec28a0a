"""``python -m gcl_zoo_serve ...`` (installed; ``-m serve`` in a source checkout): the same as ``gcl-zoo serve``."""
import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
