"""Re-estimate BatchNorm statistics on data (for nets with random or fine-tuned weights).

Random-weight model-zoo nets (``pretrained=False``) have BatchNorm running statistics
of 0/1, so their activations look nothing like a trained net's and int8 agreement
measured on them means little. One training-mode forward pass with momentum 0 sets
every BatchNorm's running mean and variance to the statistics of the data it sees,
layer after layer, exactly as inference will then see them.
"""
import logging

import mxnet as mx
from mxnet import autograd
from mxnet.gluon import nn

from .. import _mxnet
from ..errors import CalibrationDataError

__all__ = ["reestimate_batchnorm"]

_log = logging.getLogger(__name__)


def _batchnorms(block):
    found = [block] if isinstance(block, nn.BatchNorm) else []
    for child in _mxnet.child_blocks(block):
        found.extend(_batchnorms(child))
    return found


def _clear_cached_ops(block):
    if isinstance(block, mx.gluon.HybridBlock):
        _mxnet.clear_cached_op(block)
    for child in _mxnet.child_blocks(block):
        _clear_cached_ops(child)


def reestimate_batchnorm(net, batch):
    """Set every BatchNorm's running statistics from one batch (modifies ``net``).

    Parameters
    ----------
    net : mxnet.gluon.Block
        The network; its BatchNorm layers are updated in place.
    batch : NDArray or tuple of NDArray
        Input(s) of shape ``(N, ...)``; use a large, representative batch (e.g. 64 images).

    Returns
    -------
    int
        Number of BatchNorm layers updated.
    """
    inputs = list(batch) if isinstance(batch, (list, tuple)) else [batch]
    if not inputs or any(not isinstance(x, mx.nd.NDArray) for x in inputs):
        raise CalibrationDataError("reestimate_batchnorm needs NDArray input(s), got %r."
                                   % (type(batch).__name__,))
    layers = _batchnorms(net)
    saved = [_mxnet.batchnorm_momentum(bn) for bn in layers]
    try:
        for bn in layers:
            _mxnet.set_batchnorm_momentum(bn, 0.0)
        _clear_cached_ops(net)
        # MXNet 1.x applies the running-statistics update of BatchNorm in the backward
        # pass, so a backward (of a dummy head) is needed after the forward.
        inputs = [x.copy() for x in inputs]
        for x in inputs:
            x.attach_grad()
        with autograd.record(train_mode=True):
            out = net(*inputs)
            flat = out if isinstance(out, (list, tuple)) else [out]
            head = mx.nd.add_n(*[o.sum() for o in flat])
        head.backward()
        mx.nd.waitall()
    finally:
        for bn, momentum in zip(layers, saved):
            _mxnet.set_batchnorm_momentum(bn, momentum)
        _clear_cached_ops(net)
    _log.info("Re-estimated the statistics of %d BatchNorm layers on %d samples.",
              len(layers), inputs[0].shape[0])
    return len(layers)
