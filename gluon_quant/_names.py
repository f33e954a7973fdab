"""Name handling shared by every registry: close-match suggestions for unknown names, and
the class name a user knows a network by."""
import difflib

__all__ = ["class_name", "suggest"]


def suggest(name, candidates, n=3):
    """Return a short ``" Did you mean ...?"`` hint for ``name`` among ``candidates``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)
    return (" Did you mean %s?" % " or ".join(repr(c) for c in close)) if close else ""


def class_name(net):
    """The network's class as the user knows it: the first class of its MRO not defined in
    gluon_quant (an imported fp32 pair is wrapped in ``_mxnet.GraphBlock``: ``SymbolBlock``)."""
    return next(cls.__name__ for cls in type(net).__mro__
                if not cls.__module__.startswith("gluon_quant"))
