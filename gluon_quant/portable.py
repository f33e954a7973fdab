"""A built int8 model as plain, picklable data, to run it in another process.

:func:`gluon_quant.tune` with ``engine='ray'`` evaluates each quantized candidate in a Ray
task: the candidate is built here (the same code path as a sequential run), and only its
final int8 graph, its parameters (int8 weights as int8) and its output nesting travel.
The task rebuilds a :class:`~gluon_quant.QuantizedSymbolBlock` over the same graph and
parameters, so it computes the same outputs as the block it was made from.
"""
from dataclasses import dataclass
from typing import Any, Dict, Tuple

import mxnet as mx
import numpy as np

from . import _mxnet
from .backends import get_spec
from .errors import GraphError
from .symbol_block import QuantizedSymbolBlock

__all__ = ["PortableModel"]


@dataclass(frozen=True)
class PortableModel:
    """The final graph of a built ``QuantizedHybridBlock`` and its parameters.

    Attributes
    ----------
    symbol_json : str
    params : dict of str to numpy.ndarray
        Every parameter of the int8 graph (int8 weights keep their dtype).
    input_names : tuple of str
    out_format : object
        How the network nests its outputs (see :func:`gluon_quant._mxnet.regroup`).
    static_alloc : bool
        Whether the backend runs the graph with ``static_alloc`` (as the block does).
    """

    symbol_json: str
    params: Dict[str, np.ndarray]
    input_names: Tuple[str, ...]
    out_format: Any
    static_alloc: bool

    @classmethod
    def of(cls, qnet):
        """The portable form of a built (finalized) ``QuantizedHybridBlock``."""
        if qnet.model is None:
            raise GraphError("Only a quantized network can be sent to another process: "
                             "call finalize() first.")
        return cls(symbol_json=qnet.quantized_graph.tojson(),
                   params={k: v.asnumpy() for k, v in qnet.model.params.items()},
                   input_names=tuple(qnet.input_names), out_format=qnet.fused.out_format,
                   static_alloc=bool(get_spec(qnet.backend.value).static_alloc))

    def build(self, ctx=None):
        """A :class:`~gluon_quant.QuantizedSymbolBlock` running this model (CPU default)."""
        ctx = ctx if ctx is not None else mx.cpu()
        sym = mx.sym.load_json(self.symbol_json)
        inputs = [mx.sym.var(name, dtype="float32") for name in self.input_names]
        block = QuantizedSymbolBlock(sym, inputs, metadata={
            "output_format": self.out_format,
            "inputs": [{"name": n, "dtype": "float32"} for n in self.input_names]})
        _mxnet.load_block_params(block, {k: mx.nd.array(v, ctx=ctx, dtype=v.dtype)
                                         for k, v in self.params.items()}, ctx)
        if self.static_alloc:
            block.hybridize(**_mxnet.static_flags(sym))
        return block
