"""Linear layers written as matrix products, run as the dense layers they are.

Hand-written Gluon layers often compute ``x W (+ b)`` themselves instead of using
``nn.Dense``: ``F.dot(x, self.weight)`` over a ``params.get`` weight, a tied language-model
decoder ``F.dot(h, embedding_weight, transpose_b=True)``, ``np.dot``/``np.matmul`` in
NumPy mode, ``F.linalg.gemm2(x, w, transpose_b=True, alpha=...)``, then
``F.broadcast_add(..., bias)``. MXNet 1.9.1 has no int8 kernel for ``dot``, ``_np_dot``,
``_npi_matmul`` or ``_linalg_gemm2``, so such layers stayed fp32 whatever their size
("no int8 kernel for dot on onednn").

:func:`products_as_dense` rewrites a product of a tensor of rank >= 2 and a 2-D
parameter (or an expression over parameters only, such as ``w.T``), the parameter on the
right, as ``FullyConnected(flatten=False, no_bias=True)`` over the weight transposed to
``(out, in)`` (``transpose_b=True`` products read it as it is). Exact: both contract the
last axis of ``x`` with the weight's input axis; the transpose is a parameter expression
that ``fold_parameter_expressions`` computes once (``gemm2``'s ``alpha`` scales it there
too). The bias added after such a layer is
folded into it by :mod:`gluon_quant.graph.affine`, so that it fuses with the activation
after it as ``nn.Dense`` does. Needs the graph's shapes (``context.infer_shapes``);
without them nothing is rewritten.
"""
import logging

from .inspect import is_true
from .rewrites import append_nodes, parameter_entries, private_attrs, shaped_nodes

__all__ = ["products_as_dense", "PRODUCTS"]

_log = logging.getLogger(__name__)

#: Products of two tensors that contract the last axis of the first with the first axis of
#: a 2-D second one (``dot`` with ``transpose_a=False``; NumPy mode's ``dot`` and
#: ``matmul``; ``tensordot`` with ``axes=1``; ``linalg.gemm2`` over its default axis).
PRODUCTS = frozenset(("dot", "_np_dot", "_npi_matmul", "_npi_tensordot_int_axes",
                      "_linalg_gemm2"))


def _transposed_b(node):
    """Whether a product reads its second operand transposed; None where it is not one
    this rewrite runs as a dense layer (a transposed or sparse first operand, other
    tensordot axes, a ``gemm2`` over other axes)."""
    attrs = node.get("attrs") or {}
    if (node["op"] == "_npi_tensordot_int_axes" and str(attrs.get("axes")) != "1") or \
            str(attrs.get("axis", "-2")) != "-2":      # gemm2 over other axes
        return None
    if is_true(attrs.get("transpose_a")) or \
            attrs.get("forward_stype") not in (None, "None", "default"):
        return None
    return is_true(attrs.get("transpose_b"))


def products_as_dense(graph, context):
    """Rewrite ``x . W`` (``W`` a 2-D parameter or parameter expression, ``x`` of rank
    >= 2, not a parameter) as ``FullyConnected(x, W^T, flatten=False, no_bias=True)``, in
    place. Products the user's ``exclude`` names are left as they are.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    candidates, shapes = shaped_nodes(graph, context, PRODUCTS, arity=2)
    nodes = graph["nodes"]
    constant = parameter_entries(graph, context.param_shapes) if candidates else []
    added, count, transposed_weights = [], 0, {}
    for node in candidates:
        (a, a_out, _), (b, b_out, _) = node["inputs"]
        transposed = _transposed_b(node)
        a_shape = shapes.get((nodes[a]["name"], a_out))
        b_shape = shapes.get((nodes[b]["name"], b_out))
        if transposed is None or not constant[b] or constant[a] or a_shape is None or \
                len(a_shape) < 2 or b_shape is None or len(b_shape) != 2 or \
                node["name"] in context.excluded:
            continue
        weight = list(node["inputs"][1])
        if not transposed:      # one transpose per weight, however many products read it
            key = tuple(weight[:2])
            if key not in transposed_weights:
                added.append({"op": "transpose", "name": node["name"] + "_dense_weight",
                              "attrs": {"axes": "(1, 0)"}, "inputs": [weight]})
                transposed_weights[key] = [len(nodes) + len(added) - 1, 0, 0]
            weight = list(transposed_weights[key])
        alpha = (node.get("attrs") or {}).get("alpha")
        if alpha is not None and float(alpha) != 1.0:     # gemm2: alpha (x . W) = x . (alpha W)
            added.append({"op": "_mul_scalar", "name": node["name"] + "_dense_alpha",
                          "attrs": {"scalar": str(alpha)}, "inputs": [weight]})
            weight = [len(nodes) + len(added) - 1, 0, 0]
        context.rewritten[node["name"]] = (
            "%s (x . W, W a %s parameter) run as a dense layer (FullyConnected)"
            % (node["op"], "x".join(map(str, b_shape))))
        node["op"] = "FullyConnected"
        # flatten=True is the same on a 2-D input, and what cuDNN's int8 GEMM takes
        node["attrs"] = dict(private_attrs(node), no_bias="True",
                             flatten=str(len(a_shape) == 2),
                             num_hidden=str(b_shape[0] if transposed else b_shape[1]))
        node["inputs"] = [node["inputs"][0], weight]
        count += 1
    if count:
        append_nodes(graph, added)      # each transpose before the dense layer reading it
        _log.debug("Ran %d matrix product(s) with a parameter as dense layers.", count)
    return {}
