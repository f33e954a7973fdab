"""Name handling shared by every registry: close-match suggestions for unknown names."""
import difflib

__all__ = ["suggest"]


def suggest(name, candidates, n=3):
    """Return a short ``" Did you mean ...?"`` hint for ``name`` among ``candidates``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)
    return (" Did you mean %s?" % " or ".join(repr(c) for c in close)) if close else ""
