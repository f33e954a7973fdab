"""Changing a Gluon model's block tree in place (``quantize_parts``): Gluon's own API
refuses it, so these reach into its registry."""
import contextlib

import mxnet as mx

from .base import MXNetError, native_output


@contextlib.contextmanager
def imperative(blocks):
    """Run the hybridized ones of ``blocks`` imperatively inside the context: their
    children are then called through Gluon's ``__call__`` (and its forward hooks) rather
    than inside one cached graph. Their cached graphs are dropped on the way out."""
    active = [(b, b._active) for b in blocks if isinstance(b, mx.gluon.HybridBlock)]
    for block, _ in active:
        block._active = False
    try:
        yield
    finally:
        for block, was in active:
            block._active = was
            block._clear_cached_op()


def run_error(net, call, as_graph):
    """The exception ``call()`` (which calls the model ``net``) raises with ``net`` run
    layer by layer (``as_graph=False``) or as one graph (as after ``net.hybridize()``), or
    None when it runs (NotImplemented: a plain Block does not run as one graph). The
    model's hybridization is as before on the way out, its cached graphs dropped.

    For diagnosing a graph MXNet refuses; only where no reshape of the graph is given
    inputs of the wrong size (:class:`~.shapes.ReshapeSizeError`), or the run may read
    past their memory."""
    if as_graph and not isinstance(net, mx.gluon.HybridBlock):
        return NotImplemented
    blocks = [net]
    for block in blocks:
        blocks.extend(block._children.values())
    try:
        mx.nd.waitall()
    except MXNetError:              # an earlier operation's: not this run's
        pass
    with imperative(blocks):
        if as_graph:
            net._active = True
        try:
            # MXNet prints the arguments of a failed shape inference ("infer_shape
            # error. Arguments: ...") before raising: the error is what is asked for.
            with native_output([]), mx.autograd.pause():
                call()
                mx.nd.waitall()
        except Exception as err:    # noqa: BLE001 - the failure is what is asked for
            return err
    return None


def replace_child(parent, name, block):
    """Put ``block`` in the place of ``parent``'s child ``name``: in its registry, in the
    attributes holding the old child (directly or in a list) and, where ``parent`` is a
    HybridBlock, with its cached graph dropped. Gluon's ``__setattr__`` refuses a block of
    another class in an attribute's place, and ``register_child`` a plain Block under a
    HybridBlock, so both are bypassed here."""
    old = parent._children[name]
    parent._children[name] = block
    for attr, value in list(vars(parent).items()):
        if value is old:
            object.__setattr__(parent, attr, block)
        elif isinstance(value, list) and any(v is old for v in value):
            value[:] = [block if v is old else v for v in value]
        elif type(value) is tuple and any(v is old for v in value):     # not a namedtuple
            object.__setattr__(parent, attr, type(value)(block if v is old else v
                                                         for v in value))
    if isinstance(parent, mx.gluon.HybridBlock):
        parent._clear_cached_op()


def params_with_prefix(block, prefix=""):
    """``block``'s parameters keyed by attribute path, as Gluon's ``save_parameters`` of a
    parent collects them (``encoder.embed.weight``)."""
    return block._collect_params_with_prefix(prefix)
