"""``python -m gluon_quant.demo``: the CLI's ``demo`` command.

The command line prints; :mod:`gluon_quant.demo` only computes (:func:`run_demo`) and
formats (:func:`format_summary`).
"""
import sys

from ..cli import main as cli_main


def main(argv=None):
    """Run ``gluon-quant demo`` with ``argv`` (default: the process's arguments)."""
    return cli_main(["demo"] + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    raise SystemExit(main())
