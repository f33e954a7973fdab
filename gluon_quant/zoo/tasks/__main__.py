"""``python -m gluon_quant.zoo.tasks [--retrain [NAME ...]]``: check or retrain the task nets.

Without ``--retrain`` it loads the shipped weights and prints each net's held-out fp32
metric; with it, it trains the named nets (all by default) again and rewrites the weights
and their manifest (a few minutes per net on one core).
"""
import argparse
import logging

from . import RECIPES, evaluate, retrain, task_data
from .compare import TASK_NETS


def main(argv=None):
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m gluon_quant.zoo.tasks",
                                     description=__doc__.split("\n\n")[1])
    parser.add_argument("--retrain", nargs="*", metavar="NAME", choices=sorted(RECIPES),
                        help="train these nets again (all when none is named)")
    parser.add_argument("--verbose", action="store_true", help="log training progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.retrain is not None:
        retrain(args.retrain or sorted(RECIPES))
    for name, (kind, load, metric) in TASK_NETS.items():
        score = evaluate(kind, load(), task_data(kind, "eval"))
        print("%-10s held-out fp32 %-8s %.4f" % (name, metric, score))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
