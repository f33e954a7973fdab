"""Training heads of Module-API checkpoints as the operators they compute at inference.

A model saved with ``Module.save_checkpoint`` ends in a loss head, such as
``SoftmaxOutput(fc, softmax_label)``: at inference the head computes only a softmax (or the
identity, or a sigmoid) of its data, and its label is an argument nothing else reads.
Loaded as a ``SymbolBlock``, that label is one more input the caller has to feed, though
its value never matters (MXNet's ``Module.predict`` binds without it).
:func:`inference_heads` rewrites each head as its inference operator, on the JSON graph,
so that the label disappears from the graph's arguments. Outputs are unchanged.
"""
import logging

from .rewrites import private_attrs, reachable

__all__ = ["inference_heads", "loss_heads", "LOSS_HEADS"]

_log = logging.getLogger(__name__)

#: Loss heads whose forward pass is a plain operator of their data (MXNet 1.9.1
#: ``src/operator/softmax_output``, ``regression_output``, ``svm_output``); ``Softmax``
#: is the deprecated name of ``SoftmaxOutput``.
LOSS_HEADS = ("SoftmaxOutput", "Softmax", "LinearRegressionOutput", "MAERegressionOutput",
              "LogisticRegressionOutput", "SVMOutput")


def _true(value):
    return str(value).lower() in ("true", "1")


def _inference_op(node):
    """``(op, attrs)`` computing ``node``'s forward output from its data alone."""
    op, attrs = node["op"], node.get("attrs") or {}
    if op in ("SoftmaxOutput", "Softmax"):
        if _true(attrs.get("preserve_shape")):
            return "softmax", {"axis": "-1"}
        # multi_output: a softmax over axis 1 at every position; else over all of a
        # sample's values (the data is flattened to (N, -1) and the shape restored).
        return "SoftmaxActivation", {"mode": "channel" if _true(attrs.get("multi_output"))
                                     else "instance"}
    if op == "LogisticRegressionOutput":
        return "sigmoid", {}
    return "_copy", {}          # linear and MAE regression, SVM: the data itself


def inference_heads(graph, only=None):
    """Rewrite the loss heads of ``graph`` (in place) as their inference operators.

    Parameters
    ----------
    graph : dict
        A JSON graph (``mx.sym.Symbol.tojson`` parsed).
    only : set of str, optional
        Rewrite only the heads of these names.

    Returns
    -------
    dict of str to str
        Rewritten head name -> the name of the label argument it no longer reads. A label
        that another node reads stays an argument.
    """
    nodes = graph["nodes"]
    rewritten = {}
    for node in nodes:
        if node["op"] not in LOSS_HEADS or len(node["inputs"]) != 2 or (
                only is not None and node["name"] not in only):
            continue
        op, attrs = _inference_op(node)
        label = nodes[node["inputs"][1][0]]
        rewritten[node["name"]] = label["name"]
        node["op"], node["attrs"] = op, dict(private_attrs(node), **attrs)
        node["inputs"] = node["inputs"][:1]
        node.pop("param", None)
    if rewritten:
        graph.pop("node_row_ptr", None)
        graph.update(reachable(nodes, graph["heads"], graph.get("attrs")))
        _log.debug("Loss heads run as their inference operators: %s.", rewritten)
    return rewritten


def loss_heads(graph, context):
    """Traced-graph pass: a loss head whose label is a parameter of the net runs as its
    inference operator (:func:`inference_heads`).

    A Module-API symbol wrapped in a Gluon ``SymbolBlock`` with ``data`` as its only input
    makes ``softmax_label`` a parameter, initialized with the shape of the first batch: the
    int8 graph then ran only at that batch size ("Error in operator softmax: Shape
    inconsistent, Provided = [8], inferred shape=[2]"). Its value never reaches the
    output, so the rewrite is exact. A label that the batches feed (an input) stays.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes, params = graph["nodes"], set(context.param_shapes)
    heads = {node["name"] for node in nodes if node["op"] in LOSS_HEADS
             and len(node["inputs"]) == 2
             and nodes[node["inputs"][1][0]]["op"] == "null"
             and nodes[node["inputs"][1][0]]["name"] in params}
    if heads:
        inference_heads(graph, only=heads)
    return {}
