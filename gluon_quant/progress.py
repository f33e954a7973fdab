"""Progress bars for long steps (calibration), quiet when asked or when not on a terminal."""
import sys

from tqdm.auto import tqdm

__all__ = ["progress_bar"]


def progress_bar(iterable, *, enabled=True, desc=None, total=None, unit="batch"):
    """Wrap ``iterable`` in a tqdm bar with an ETA.

    The bar is shown only when ``enabled`` and stderr is a terminal, so tests, logs
    and CI output stay clean.
    """
    show = bool(enabled) and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if not show:
        return iterable
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True)
