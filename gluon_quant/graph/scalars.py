"""Multiplications and divisions by 1 removed; small integer powers run as products; a sum
of a tensor with itself run as a product by 2.

**Unit scalars.**

Gluon's ``nn.Swish()`` computes ``x * sigmoid(beta * x)`` with ``beta = 1.0`` as a
``_mul_scalar(x, 1.0)`` over the whole activation tensor (5 ms of a 6-layer Swish CNN's
44 ms in int8, batch 16 at 112 px); hand-written code scales by a hyper-parameter left at
1 (``x * self.scale``, ``x / temperature``) the same way. MXNet runs each as an
element-wise pass and fuses none.

:func:`unit_scalars` makes the readers of ``_mul_scalar(x, 1)`` and ``_div_scalar(x, 1)``
(and NumPy mode's ``_npi_multiply_scalar`` / ``_npi_true_divide_scalar``) read ``x``.
Bit-exact: ``x * 1.0`` and ``x / 1.0`` are ``x`` in IEEE arithmetic, NaN and -0.0
included. A node that is an output of the net or that the user's ``exclude`` names is
left as it is.

**Powers.** ``x ** 2`` and ``x ** 3`` (a hand-written variance or RMSNorm, a squared
distance, the tanh-approximated GELU's ``x ** 3``) run MXNet's ``_power_scalar``, a
``powf`` per element: 18.5 ms for ``x ** 2`` of 8x128x3072 floats, where ``square(x)``
takes 1.3 ms. :func:`small_powers` runs ``x ** 2`` as ``square(x)`` and ``x ** 3`` as
``x * square(x)`` (and NumPy mode's ``_npi_power_scalar`` the same way): equal up to
float rounding (``square`` is correctly rounded, MXNet's ``powf`` is 1 ulp off for 0.05%
of values; the cube is rounded twice). Nodes the user's ``exclude`` names are left.

**Self sums.** ``y + y`` of a convolution's output broke MXNet 1.9.1's oneDNN fusion: it
fuses the convolution with the sum, reading the convolution's own output as the sum
operand, and the fused graph fails shape inference ("Shape inconsistent, Provided =
[8], inferred shape=(8,-1,3,3)"): quantization failed. :func:`self_sums` runs a sum
whose two operands are one tensor as ``_mul_scalar(y, 2)``, bit-exact (doubling is exact
in IEEE arithmetic), which :func:`~gluon_quant.graph.affine.affine_into_layers` then folds
into the convolution before it.
"""
import logging

from .builder import NodeBuilder
from .rewrites import private_attrs, prune

__all__ = ["unit_scalars", "small_powers", "self_sums", "UNIT_SCALAR_OPS"]

_log = logging.getLogger(__name__)

#: Operators that leave their input as it is with ``scalar = 1``.
UNIT_SCALAR_OPS = frozenset(("_mul_scalar", "_div_scalar", "_npi_multiply_scalar",
                             "_npi_true_divide_scalar"))


def _is_unit(node):
    if node["op"] not in UNIT_SCALAR_OPS or len(node["inputs"]) != 1:
        return False
    try:
        return float((node.get("attrs") or {}).get("scalar")) == 1.0
    except (TypeError, ValueError):
        return False


def unit_scalars(graph, context):
    """Bypass multiplications and divisions by 1 (see the module docstring), in place.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    nodes, heads = graph["nodes"], {h[0] for h in graph["heads"]}
    excluded = context.excluded if context is not None else frozenset()
    source = {}         # bypassed node -> the entry it passed through
    for index, node in enumerate(nodes):
        if _is_unit(node) and index not in heads and node["name"] not in excluded:
            entry = list(node["inputs"][0])
            source[index] = source.get(entry[0], entry) if entry[1] == 0 else entry
    if not source:
        return {}
    for node in nodes:
        node["inputs"] = [list(source[e[0]]) if e[0] in source and e[1] == 0 else e
                          for e in node["inputs"]]
    prune(graph)
    _log.debug("Removed %d multiplication(s)/division(s) by 1.", len(source))
    return {}


def small_powers(graph, context):
    """Run ``x ** 2`` as ``square(x)`` and ``x ** 3`` as ``x * square(x)``, in place under
    the power's name (see the module docstring).

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    excluded = context.excluded if context is not None else frozenset()
    build, done = NodeBuilder(graph), 0
    for node in graph["nodes"]:
        if node["op"] not in ("_power_scalar", "_npi_power_scalar") or \
                len(node["inputs"]) != 1 or node["name"] in excluded:
            continue
        try:
            power = float((node.get("attrs") or {}).get("scalar"))
        except (TypeError, ValueError):
            continue
        data = list(node["inputs"][0])
        if power == 2.0:
            node.update(op="square", attrs=private_attrs(node))
        elif power == 3.0:
            squared = build.add("square", node["name"] + "_square", [data])
            node.update(op="elemwise_mul", inputs=[data, squared], attrs=private_attrs(node))
        else:
            continue
        done += 1
    build.append()
    if done:
        _log.debug("Ran %d power(s) of 2 or 3 as square(s).", done)
    return {}


#: Sums of two tensors (legacy, broadcasting and NumPy mode's).
_SUMS = frozenset(("elemwise_add", "_plus", "_Plus", "broadcast_add", "broadcast_plus",
                   "_npi_add"))


def self_sums(graph, context):
    """Run a sum of a tensor with itself as a product by 2, in place under the sum's name
    (see the module docstring); nodes the user's ``exclude`` names are left.

    Returns
    -------
    dict
        Empty: the rewrite keeps nothing in fp32.
    """
    excluded = context.excluded if context is not None else frozenset()
    done = 0
    for node in graph["nodes"]:
        inputs = node["inputs"]
        if node["op"] in _SUMS and len(inputs) == 2 and inputs[0][:2] == inputs[1][:2] \
                and node["name"] not in excluded:
            node.update(op="_mul_scalar", inputs=[list(inputs[0])],
                        attrs=dict(private_attrs(node), scalar="2.0"))
            done += 1
    if done:
        _log.debug("Ran %d sum(s) of a tensor with itself as products by 2.", done)
    return {}
