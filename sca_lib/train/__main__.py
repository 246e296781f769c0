"""``python -m sca_lib.train`` (and ``torchrun ... -m sca_lib.train``): see :mod:`sca_lib.train`."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
