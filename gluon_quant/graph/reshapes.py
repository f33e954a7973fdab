"""NumPy-mode reshapes run as legacy ``Reshape``, and reshapes that are flattens as ``Flatten``.

A net flattens its feature map before a dense layer as often with a reshape as with
``Flatten``: ``x.reshape((0, -1))`` or ``x.reshape((-1, C * H * W))`` in a legacy graph,
``x.reshape((-1, C * H * W))`` (``_np_reshape``) or ``npx.reshape(x, (-2, -1))``
(``_npx_reshape``) in NumPy mode. Two problems with MXNet 1.9.1:

- ``Reshape`` has no int8 kernel: between an int8 pooling and an int8 dense layer it cost
  a dequantize and a quantize (``Flatten`` has one, ``_contrib_quantized_flatten``);
- NumPy mode's reshapes read a oneDNN operator's blocked output as if it were plain: a
  NumPy-mode CNN with ``pool(x).reshape((-1, 2048))`` before its classifier failed in
  calibration with "could not create a primitive descriptor for a reorder primitive"
  (its fp32 net, hybridized, ran).

The second problem is not the flatten's alone: any NumPy-mode reshape of a oneDNN output
read by a oneDNN operator failed that way (``pool(x).reshape((-1, C, H * W))`` before a
``Dense(flatten=False)``), while the legacy ``Reshape`` (oneDNN-aware: it hands a plain
array on) ran. :func:`numpy_reshapes` runs ``_np_reshape`` and ``_npx_reshape`` as the
legacy ``Reshape`` with the same target, where their codes have a legacy twin (NumPy's
only special value is -1; ``npx.reshape``'s -2/-4/-5/-6 are legacy's 0/-2/-3/-4; its -3,
dropping a unit axis, has none, and such reshapes are left as they are).

:func:`reshapes_as_flatten` rewrites a reshape of ``(N, d1, ..., dk)`` data (k >= 2) to
``(N, d1 * ... * dk)`` whose target keeps the batch axis free (``-1`` or a copy code
first, never a fixed batch size) as ``Flatten``: the same values in the same order, for
any batch size.
"""
import logging

import numpy as np

from .rewrites import private_attrs, shaped_nodes

__all__ = ["numpy_reshapes", "reshapes_as_flatten"]

_log = logging.getLogger(__name__)

#: Reshape operators and (target attribute, codes meaning "this dimension as it is").
_RESHAPES = {"Reshape": ("shape", (0,)), "_np_reshape": ("newshape", ()),
             "_npx_reshape": ("newshape", (-2,))}


def _target(text):
    try:
        return tuple(int(v) for v in str(text).strip("()[] ").split(",") if v.strip())
    except ValueError:
        return None


#: ``npx.reshape``'s codes and their legacy ``Reshape`` twins.
_NPX_CODES = {-1: -1, -2: 0, -4: -2, -5: -3, -6: -4}


def _legacy_target(node):
    """The legacy ``Reshape`` target of a NumPy-mode reshape ``node``, or None."""
    attrs = node.get("attrs") or {}
    target = _target(attrs.get("newshape"))
    if target is None or not target:
        return None
    if node["op"] == "_np_reshape":
        if attrs.get("order", "C") != "C" or any(v == 0 or v < -1 for v in target):
            return None
        return target
    if any(v < 0 and v not in _NPX_CODES for v in target):
        return None
    return tuple(_NPX_CODES.get(v, v) if v < 0 else v for v in target)


def numpy_reshapes(graph, context=None):  # pylint: disable=unused-argument
    """Run NumPy mode's ``_np_reshape`` / ``_npx_reshape`` as the legacy ``Reshape`` with
    the same target (see the module docstring).

    Returns
    -------
    dict
        Empty.
    """
    for node in graph["nodes"]:
        if node["op"] not in ("_np_reshape", "_npx_reshape") or len(node["inputs"]) != 1:
            continue
        target = _legacy_target(node)
        if target is None:
            continue
        reverse = (node.get("attrs") or {}).get("reverse", "False")
        node["op"] = "Reshape"
        node["attrs"] = dict(private_attrs(node), shape=str(target), reverse=str(reverse))
    return {}


def _flattens(node, in_shape, out_shape):
    """Whether ``node`` flattens ``in_shape`` to ``out_shape`` for every batch size."""
    attrs = node.get("attrs") or {}
    key, copy_codes = _RESHAPES[node["op"]]
    target = _target(attrs.get(key))
    if target is None or len(target) != 2 or str(attrs.get("reverse", "False")).lower() \
            in ("true", "1") or attrs.get("order", "C") != "C":
        return False
    per_sample = int(np.prod(in_shape[1:]))
    free_batch = target[0] == -1 and target[1] == per_sample or (
        target[0] in copy_codes and target[1] in (-1, per_sample))
    return free_batch and len(in_shape) >= 3 \
        and tuple(out_shape) == (in_shape[0], per_sample)


def reshapes_as_flatten(graph, context):
    """Rewrite the reshapes that flatten the batch's samples as ``Flatten``.

    Needs the shapes (``context.infer_shapes``): without them nothing is rewritten. The
    node keeps its name.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes = graph["nodes"]
    candidates, shapes = shaped_nodes(graph, context, _RESHAPES, arity=1)
    rewritten = 0
    for node in candidates:
        data = node["inputs"][0]
        in_shape = shapes.get((nodes[data[0]]["name"], data[1]))
        out_shape = shapes.get((node["name"], 0))
        if in_shape is None or out_shape is None or nodes[data[0]]["op"] == "null" \
                or not _flattens(node, in_shape, out_shape):
            continue        # (an input flattened is left as it is: nothing int8 precedes it)
        node["op"], node["attrs"] = "Flatten", private_attrs(node)
        rewritten += 1
    if rewritten:
        _log.debug("Rewrote %d flattening reshapes as Flatten.", rewritten)
    return {}
