"""Bias correction in one run of the int8 graph equals correcting layer after layer."""
import mxnet as mx
import numpy as np

from gluon_quant import _mxnet


def sequential_corrections(*, fused, final, layers, params, fp32_params, inputs, input_names,
                           table, ctx, references=None, activated=frozenset()):
    """The definition: each layer measured on a run of the int8 graph up to it, with the
    corrections of the layers before it in place (one run per layer)."""
    known = dict(references or {})
    missing = [name for name, _ in layers if name not in known]
    if missing:
        internals = fused.get_internals()
        group = mx.sym.Group([internals[name + "_output"] for name in missing])
        known.update(zip(missing, _mxnet.run_block(
            _mxnet.symbol_block(group, input_names, fp32_params, ctx), inputs, "reference")))
    current, corrections = dict(params), {}
    for name, target in layers:
        tap = _mxnet.tap_outputs(final, ["quantized_" + name], input_names)
        q = _mxnet.run_block(_mxnet.symbol_block(tap, input_names, current, ctx), inputs,
                             "int8")[0].asnumpy()
        f = known[name].asnumpy()
        axes = tuple(i for i in range(f.ndim) if i != 1) if f.ndim > 1 else (0,)
        lo, hi = table.get(name + "_output", (-np.inf, np.inf))
        inside = (f > lo) & (f < hi)
        if name in activated:
            inside &= (q > lo) & (q < hi)
        count = inside.sum(axis=axes)
        delta = np.where(count > 0, ((f - q) * inside).sum(axis=axes) / np.maximum(count, 1),
                         0.0).astype(np.float32)
        if delta.shape != tuple(current[target].shape):
            continue
        current[target] = current[target] + mx.nd.array(delta, ctx=ctx)
        corrections[target] = [float(v) for v in delta]
    return corrections
