"""``python -m gluon_quant``: the ``gluon-quant`` command line (:mod:`gluon_quant.cli`), for
environments whose scripts folder is not on ``PATH``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
