"""Re-estimate BatchNorm statistics on data (for nets with random or fine-tuned weights).

Random-weight model-zoo nets (``pretrained=False``) have BatchNorm running statistics
of 0/1, so their activations look nothing like a trained net's and int8 agreement
measured on them means little. One training-mode forward pass with momentum 0 sets
every BatchNorm's running mean and variance to the statistics of the data it sees,
layer after layer, exactly as inference will then see them.
"""
import json
import logging

import mxnet as mx
from mxnet import autograd
from mxnet.gluon import nn

from .. import _mxnet
from ..errors import CalibrationDataError, ModelExecutionError

__all__ = ["reestimate_batchnorm", "set_batchnorm_statistics", "set_symbol_block_statistics"]

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
    if inputs[0].shape[0] == 1:     # BatchNorms after global pooling would see one value
        return set_batchnorm_statistics(net, inputs)
    layers = _batchnorms(net)
    try:
        _training_pass(net, inputs, layers)
    except Exception as err:    # pylint: disable=broad-except
        # MXNet's backward fails on GluonCV's R(2+1)D and SlowFast ("Check failed:
        # !is_view"); YOLOv3's training-mode forward asks for training targets (TypeError)
        _log.info("The training-mode pass failed (%s: %s); setting the statistics with "
                  "forward pre-hooks instead.", type(err).__name__, _mxnet.first_line(err))
        return set_batchnorm_statistics(net, inputs)
    _log.info("Re-estimated the statistics of %d BatchNorm layers on %d samples.",
              len(layers), inputs[0].shape[0])
    return len(layers)


def _training_pass(net, inputs, layers):
    """One training-mode forward and backward pass with momentum 0 on every BatchNorm."""
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


def set_batchnorm_statistics(net, batch):
    """Set every BatchNorm's running statistics from ``batch``, in inference mode.

    Same result as :func:`reestimate_batchnorm` (layer after layer, each BatchNorm gets
    the mean and variance of its own input), for nets whose training-mode forward needs
    more than images (YOLOv3 asks for training targets) or whose backward pass fails
    inside MXNet (3-D video nets): a forward pre-hook on each BatchNorm writes the
    statistics just before it runs.

    Hooks do not run inside a ``SymbolBlock`` (SSD's feature extractors, which GluonCV
    builds as one): a pre-hook on the ``SymbolBlock`` itself sets the statistics of its
    inner BatchNorm nodes from its inputs instead
    (:func:`set_symbol_block_statistics`).

    Parameters
    ----------
    net : mxnet.gluon.Block
        Not hybridized.
    batch : NDArray or tuple of NDArray
        The network's input(s), ``(N, ...)``.

    Returns
    -------
    int
        Number of BatchNorm layers updated.
    """
    skipped, counts = [], []

    def hook(block, inputs):
        moments = _moments(inputs[0], _mxnet.batchnorm_axis(block))
        if moments is None:
            skipped.append(block.name)
            return
        block.running_mean.set_data(moments[0])
        block.running_var.set_data(moments[1])

    def graph_hook(block, inputs):
        counts.append(set_symbol_block_statistics(block, list(inputs)))

    layers, graphs = [], []
    stack = [net]
    while stack:
        block = stack.pop()
        if isinstance(block, mx.gluon.nn.BatchNorm):
            layers.append(block)
        elif isinstance(block, mx.gluon.SymbolBlock):
            graphs.append(block)
        stack.extend(_mxnet.child_blocks(block))
    inputs = list(batch) if isinstance(batch, (list, tuple)) else [batch]
    handles = []
    try:
        if not all(_mxnet.is_initialized(p) for p in net.collect_params().values()):
            net(*inputs)    # deferred shapes are known after one call; hooks set parameters
        handles = [bn.register_forward_pre_hook(hook) for bn in layers]
        handles += [g.register_forward_pre_hook(graph_hook) for g in graphs]
        net(*inputs)
        mx.nd.waitall()
    except (mx.base.MXNetError, ValueError) as err:     # ValueError: deferred shapes
        raise ModelExecutionError(
            "Setting the BatchNorm statistics: the network fails inside MXNet on the batch "
            "(%s): %s" % (", ".join(str(tuple(x.shape)) for x in inputs),
                          _mxnet.first_line(err))) from err
    finally:
        for handle in handles:
            handle.detach()
    _warn_single_values(skipped)
    return len(layers) - len(skipped) + sum(counts)


def _moments(x, axis=1):
    """Per-channel mean and (biased) variance of ``x`` (channels on ``axis``: 1 for
    ``(N, C, ...)``, 2 or -1 for a BatchNorm over the units of ``(N, T, units)``), or None
    where each channel holds a single value (a batch of 1 at 1x1, after global pooling):
    its variance would be 0, and the layer would multiply every other input's deviation by
    1/sqrt(eps)."""
    axis %= x.ndim
    if x.size <= x.shape[axis]:
        return None
    axes = tuple(i for i in range(x.ndim) if i != axis)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes)
    return mean.reshape((-1,)), var


def _warn_single_values(names):
    if names:
        _log.warning("%d BatchNorm layer(s) see one value per channel in this batch (%s%s): "
                     "their statistics are left as they were. Pass a batch of several "
                     "samples to set them.", len(names), ", ".join(names[:3]),
                     ", ..." if len(names) > 3 else "")


def _batchnorm_inputs(sym):
    """``[(data entry, moving-mean name, moving-variance name, axis)]`` of every BatchNorm
    of ``sym`` whose statistics are parameters, in graph order."""
    nodes = json.loads(sym.tojson())["nodes"]
    internals = sym.get_internals()
    outputs = internals.list_outputs()
    found = []
    for node in nodes:
        if node["op"] != "BatchNorm" or len(node["inputs"]) < 5:
            continue
        index, slot = node["inputs"][0][:2]
        source = nodes[index]
        key = source["name"] if source["op"] == "null" else "%s_output" % source["name"]
        if key not in outputs:      # a multi-output operator: outputs are numbered
            key = "%s_output%d" % (source["name"], slot)
        mean, var = (nodes[i]["name"] for i, _, *_ in node["inputs"][3:5])
        found.append((internals[outputs.index(key)], mean, var,
                      int((node.get("attrs") or {}).get("axis", 1))))
    return found


def set_symbol_block_statistics(block, inputs):
    """Set the BatchNorm statistics inside a Gluon ``SymbolBlock`` from ``inputs``.

    Forward hooks do not reach the BatchNorm nodes of a ``SymbolBlock`` (GluonCV builds
    SSD's feature extractors as one). Its graph runs once in training mode, where every
    BatchNorm normalises with the statistics of its own input: exactly what each one sees
    in inference mode once its running statistics are those statistics, layer after layer.
    Each BatchNorm's running mean and (biased, as in training) variance are then set.

    Parameters
    ----------
    block : mxnet.gluon.SymbolBlock
        Its parameters are initialized.
    inputs : list of NDArray
        One array per input of the block, ``(N, C, ...)``.

    Returns
    -------
    int
        Number of BatchNorm layers updated.
    """
    symbols, output = _mxnet.symbol_block_graph(block)
    layers = _batchnorm_inputs(output)
    if not layers:
        return 0
    params = {name: param.data() for name, param in block.collect_params().items()}
    values = _mxnet.run_training_mode(mx.sym.Group([entry for entry, *_ in layers]),
                                      [s.name for s in symbols], inputs, params,
                                      inputs[0].context)
    skipped = []
    for (_, mean_name, var_name, axis), x in zip(layers, values):
        moments = _moments(x, axis)
        if moments is None:
            skipped.append(mean_name)
            continue
        block.collect_params()[mean_name].set_data(moments[0])
        block.collect_params()[var_name].set_data(moments[1])
    _warn_single_values(skipped)
    return len(layers) - len(skipped)
