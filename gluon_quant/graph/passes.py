"""Every graph pass of the pipeline, in one ordered list over one representation.

The representation is the graph as MXNet writes it in JSON, parsed into a dict
(``nodes``, ``arg_nodes``, ``heads``): :func:`gluon_quant._mxnet.graph_json` makes it
from a Symbol and :func:`gluon_quant._mxnet.load_graph` turns it back. A pass is a
:class:`GraphPass`: a function ``run(graph, context)`` that edits the dict in place and
returns the nodes that must stay fp32 (name -> reason, shown in ``report()``), the stage
of the pipeline it runs at, and the backends it applies to. :data:`PASSES` lists them in
the order they run; :func:`run_passes` runs those of one stage. MXNet's own fusion
(:attr:`~gluon_quant.backends.BackendSpec.fusion_pass`) runs between the stages.

The stages of one ``quantize()`` call (:mod:`gluon_quant.pipeline`):

``TRACED`` (the traced fp32 graph, before the backend's fusion): exact fp32 rewrites,
    in :mod:`gluon_quant.graph.rewrites`
    ``normalize.fold_input_normalization``: ``QuantConfig.input_normalization``'s
    ``(x - mean) / std`` folded into the first convolutions (raw pixels are fed).
    :func:`global_adaptive_pools`: ``AdaptiveAvgPooling2D(output_size=1)`` (squeeze-excite
    blocks of SE-ResNet and MobileNetV3) becomes a global average ``Pooling``, which has an
    int8 kernel; so does a mean or max over every spatial axis (``F.mean(x, axis=(2,
    3))``, :func:`~gluon_quant.graph.pooling.spatial_reductions`), with a ``Flatten``,
    and an adaptive pooling whose windows tile its input (``tiled_adaptive_pools``); a
    global ``Pooling`` written without a kernel gets the unit kernel of its rank, which
    MXNet's int8 pooling reads (``unsized_global_pools``); a mean, max or sum over one
    other axis (token pooling ``x.mean(axis=1)``, CBAM's channel mean) runs as a global
    ``Pooling`` over that axis moved last, a sum or mean over axis 1 as a
    ``Deconvolution`` of ones (``axis_reductions``: MXNet's are 4-60x slower).
    ``reshapes.reshapes_as_flatten``: a reshape that flattens each sample (``x.reshape((0,
    -1))``, ``x.reshape((-1, C*H*W))``) becomes ``Flatten``, which has an int8 kernel and
    reads oneDNN's blocked layouts right;
    :func:`~gluon_quant.graph.reshapes.numpy_reshapes`: NumPy mode's reshapes run as the
    legacy ``Reshape`` (the NumPy ones misread oneDNN's blocked outputs);
    ``permutes``: ``SwapAxis`` as oneDNN's ``transpose``, equal splits as slices, slices
    keeping every value passed through; ``channelsplits``: a convolution read through
    channel slices as one convolution per slice; ``branches``: parallel convolution,
    BatchNorm and identity branches of one input, summed (RepVGG), as one convolution;
    ``shuffles.channel_shuffles``: ShuffleNet's channel shuffle (reshape, swap, reshape)
    and its channel slices as one-hot 1x1 convolutions, int8 between int8 layers;
    ``pixelshuffle``: depth-to-space as a one-hot grouped Deconvolution (its inverse int8).
    :func:`~gluon_quant.graph.deconv.deconv_as_conv`: a 1-D/2-D Deconvolution runs as an
    int8 convolution + a depth-to-space shuffle where the backend declares it and it was
    measured faster (simple_pose_resnet18: 1.78x -> 2.6-2.9x fp32).
    ``upsampling.nearest_upsampling_as_deconv``: nearest upsampling as oneDNN's depthwise
    ``Deconvolution`` of ones. ``prelu.prelu_as_leaky``: a PReLU with one slope runs as
    ``LeakyReLU(leaky)`` (fused into the convolution, int8), per-channel slopes on one side
    of 1 as ``max(x, a * x)`` (MXNet's PReLU kernel is 3x slower and fuses with nothing).
    :func:`~gluon_quant.graph.clamps.clamps_as_activations`: ReLU and ReLU6 spelled with
    scalar bounds (``F.maximum(x, 0)``, ``F.minimum(F.relu(x), 6)``) run as ``relu`` and
    ``clip``, which oneDNN fuses into the layer before them; ``clamps.hard_sigmoids``:
    MobileNetV3's ``clip(x + 3, 0, 6) / 6`` as one ``hard_sigmoid``.
    ``norms.norms_as_last_axis_layernorm``: channels-first ``LayerNorm``/``softmax``,
    ``InstanceNorm``, ``GroupNorm`` over the last axis of transposed or reshaped data;
    ``norms.written_layernorms``: one written out (ConvNeXt's) as one ``LayerNorm``.
    :func:`fold_dense_batchnorm`: a BatchNorm after a dense layer is folded into it.
    :func:`fold_parameter_expressions`: weights a layer builds from its parameters at every
    call (Gluon's RNN layers, BERT's q/k/v projection) become parameters computed once.
    :func:`same_shape_adds`: a broadcasting addition of same-shaped tensors (``x + y`` in
    NumPy mode) becomes ``elemwise_add``, which oneDNN fuses as a residual sum;
    :func:`numpy_concatenations`: ``np.concatenate`` becomes ``Concat`` (an int8 kernel).
    ``identity_chains``: no-ops in a row become one (MXNet's fusion broke on two);
    ``scalars``: ``x * 1`` and ``x / 1`` removed, ``x ** 2``, ``x ** 3`` as ``square``,
    ``y + y`` as ``y * 2`` (MXNet's conv + sum fusion of it failed).
    :func:`canonical_activations` (guards): ``F.relu``, ``F.sigmoid``, ``F.tanh`` run as
    ``Activation`` (relu fuses; sigmoid and tanh run oneDNN's kernels, 9x and 30x faster).
    :func:`~gluon_quant.graph.pads.pads_into_convolutions`: a symmetric zero ``Pad``
    read only by convolutions becomes their padding (``Pad`` has no int8 kernel).
    :func:`batchnorm_variants`: ``SyncBatchNorm``, ``BatchNormReLU`` as ``BatchNorm`` (+ReLU).
    :func:`masked_softmax`: a softmax with lengths (BERT's padded attention) as a mask and
    oneDNN's plain softmax (14-37 ms against 1 ms on BERT-base scores).
    :func:`lift_1d_to_2d` (oneDNN): 1-D convolutions and poolings run as 2-D ones over
    ``(N, C, 1, W)`` data (oneDNN's int8 kernels take 4-D/5-D data only).
``FUSED`` (the fused fp32 graph): which nodes stay fp32
    :func:`backend_eligibility`: operators the backend lists whose conditions (rank,
    layout, groups, modes...) the node does not meet, and operators it declares without
    an int8 kernel (LayerNorm, softmax...), with what runs instead
    (:mod:`gluon_quant.backends`).
    :func:`fp32_read_results`: an operator the backend marks ``int8_readers_only`` (oneDNN:
    a standalone ``elemwise_add``, a transformer's residual sum before LayerNorm) stays
    fp32 where only fp32 operators read its result: in int8 it only added a quantize and a
    dequantize (a 4-layer BERT: 1.22x faster, and closer to fp32). Readers it keeps fp32
    count as fp32: a pre-LayerNorm transformer's residual stream (each sum read by a
    LayerNorm and the next sum) stays fp32 whole (a ViT-Tiny: 1.6x -> 1.8x fp32).
    :func:`signed_global_pools`: MXNet's int8 pooling gives its output the input's scale,
    so the mean of a signed, zero-centred tensor (a BatchNorm output, the squeeze of
    SE-ResNet) is rounded onto a grid much coarser than the means themselves: on
    random-weight SE-ResNet-50 the pooled vector kept 25 dB SQNR in int8 against 46 dB for
    the fp32 mean of the same int8 input. In fp32 the pooled vector gets a range of its own.
    :func:`compared_pools`: a max pooling compared with its own input (CenterNet's peak
    picking ``maxpool(h) == h``) finds no peak once rounded to int8 (every detection of
    a random-weight CenterNet became class 0, score 0).
``QUANTIZED`` (the quantized graph, ranges not set)
    :func:`int8_mul_inputs`: MXNet's int8 ``elemwise_mul`` only accepts int8 inputs, but
    ``dtype='auto'`` quantizes non-negative tensors (the hard sigmoid of MobileNetV3's
    hard-swish) to uint8, which made MobileNetV3 fail at its first forward ("Expected:
    unsigned char v.s. given char"). The quantize nodes feeding a multiplication emit
    int8; a multiplication fed directly by a layer that emits uint8 stays fp32.
``CALIBRATED`` (ranges set, before post-quantization fusion) and ``FINAL`` (after it)
    :func:`exact_ranges`: MXNet prints ranges with 6 decimals (a range of 1e-7 becomes 0),
    both when it sets a calibration table and when post-quantization fusion copies
    ranges: every range is rewritten from the table at full float32 precision.
``TRACED``, ``FUSED``, ``QUANTIZED`` and ``FINAL``: guards against MXNet 1.9.1 failures,
    in :mod:`gluon_quant.graph.guards` (each with its root cause): operators sharing a name
    get unique ones; ``relu`` becomes ``Activation(relu)`` so oneDNN fuses it; conv (+BN) +
    GELU and dense + LeakyReLU are kept from fusing (their int8 fusions are wrong); int8
    dense layers and products whose output int8 and fp32 readers share stay fp32; nodes reading
    integer tensors stay fp32; a ``Flatten`` before dense layers fed by a pooling in
    squeeze-excite nets ("We can't generate TBlob for MKLDNN data"); RNN modes and LSTM
    wiring without an int8 kernel stay fp32; int8 LSTM outputs stop gradients so the
    CachedOp can be built; oneDNN arrays are made plain before ``Custom`` operators, and
    reshaped, before poolings, BatchNorms and transposes (:mod:`~gluon_quant.graph.layout`).
``FINAL``
    :func:`~gluon_quant.graph.fusedsum.fused_sum_dtypes` (oneDNN): a convolution fused
    with a residual sum writes in its sum operand's data type; the two mixes MXNet 1.9.1
    gets wrong are fixed (a range widened by 255/127, an operand re-quantized to int8).

    :func:`~gluon_quant.graph.guards.grouped_per_tensor` (oneDNN): a grouped convolution
    (1 < groups < channels) outputs int32 with one weight scale, and a requantize after it
    takes its calibrated range (per-channel scales are applied per group by MXNet).
    ``maxpools.int8_max_pools``: an fp32 max pooling of a dequantized tensor (through
    functions that never decrease) runs as int8 pooling.

Debugging and presets use :func:`calibrated_nodes` and, re-exported from
:mod:`~gluon_quant.graph.tools`, :func:`insert_fake_quant`, :func:`downstream_nodes`.
"""
import collections
import enum
import logging
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from ..backends import KERNEL_RANK_OPS, BackendSpec, why_not_int8
from .inspect import FP32_FORM_ATTR, GraphView, calib_key, describe_op, is_true, tensor_key
from .guards import (canonical_activations, chained_dequantizes, entry_dtype, flatten_fc_inputs,
                     mixed_int8_outputs, separate_broken_fusions, shared_fusion_outputs,
                     stop_rnn_gradients, grouped_per_tensor, unquantizable_rnns,
                     unsigned_relus, unsized_state_sums)
from .deconv import SHUFFLE_ATTR, deconv_as_conv, why_not_rewritten
from .heads import loss_heads
from .islands import small_int8_regions
from .pads import pads_into_convolutions
from .layout import channels_first_convolutions, plain_custom_inputs, plain_reshaped_inputs
from .maxpools import int8_max_pools
from .saturation import seven_bit_inputs, signed_dense_inputs
from .affine import affine_into_layers
from .matmul import products_as_dense
from .normalize import fold_input_normalization
from .prelu import prelu_as_leaky
from .clamps import clamps_as_activations, hard_sigmoids
from .norms import norms_as_last_axis_layernorm, written_layernorms
from .scalars import self_sums, small_powers, unit_scalars
from .upsampling import nearest_upsampling_as_deconv
from .pooling import (axis_reductions, spatial_reductions, tiled_adaptive_pools,
                      unsized_global_pools)
from .permutes import splits_as_slices, swapaxes_as_transpose, whole_slices
from .shuffles import channel_shuffles
from .channelsplits import channel_split_convolutions
from .branches import parallel_convolutions
from .fusedsum import fused_sum_dtypes, fused_sum_pass
from .pixelshuffle import pixel_shuffles
from .reshapes import numpy_reshapes, reshapes_as_flatten
from .stem import fp32_stem
from .tools import QDQ_OPS, count_ops, downstream_nodes, insert_fake_quant
from .selection import helper_owners
from .rewrites import (ParamRewrite, fold_dense_batchnorm,
                       fold_parameter_expressions, global_adaptive_pools, known_shape,
                       lift_1d_to_2d, masked_softmax, numpy_concatenations, same_shape_adds,
                       batchnorm_variants, identity_chains, unique_names)

__all__ = ["Stage", "GraphPass", "PassContext", "ParamRewrite", "PASSES", "run_passes",
           "rewritten_param_shapes", "global_adaptive_pools", "fold_dense_batchnorm",
           "fold_parameter_expressions", "masked_softmax", "lift_1d_to_2d", "deconv_as_conv",
           "integer_inputs", "small_int8_regions", "backend_eligibility",
           "signed_global_pools", "compared_pools", "COMPARED_POOL_REASON", "int8_mul_inputs",
           "exact_ranges", "fp32_read_results", "fused_sum_dtypes", "insert_fake_quant",
           "downstream_nodes", "count_ops", "calibrated_nodes", "calib_key", "tensor_key",
           "QDQ_OPS", "SIGNED_POOL_REASON"]

_log = logging.getLogger(__name__)


class Stage(enum.Enum):
    """Where in the pipeline a pass runs (see the module docstring)."""

    TRACED = "traced"
    FUSED = "fused"
    QUANTIZED = "quantized"
    CALIBRATED = "calibrated"
    FINAL = "final"


@dataclass(frozen=True)
class PassContext:
    """What a pass may read besides the graph.

    Attributes
    ----------
    spec : BackendSpec
        The backend the graph is built for.
    param_shapes : mapping of str to tuple
        Shape of every parameter (zeros where initialization is deferred).
    ranges : mapping of str to (float, float)
        Calibrated ranges by table key (empty before calibration).
    infer_dtypes : callable, optional
        ``infer_dtypes(graph) -> {internal output name: dtype}`` (MXNet's, by the adapter).
    param_rewrites : list of ParamRewrite
        Traced-graph passes that change what a parameter holds (a reshaped weight, a
        BatchNorm folded into a dense layer) append here; the pipeline applies them, in
        order, to its copies of the fp32 parameters. The user's net is never changed.
    input_normalization : (tuple of float, tuple of float), optional
        ``QuantConfig.input_normalization``: ``(mean, std)`` folded into the readers of the
        first input (:mod:`gluon_quant.graph.normalize`).
    input_rank : int, optional
        Rank of the first input of the first batch, where known.
    fp32_stem : bool
        ``QuantConfig.fp32_stem``: a cheap image stem read by a depthwise convolution
        stays fp32 with it (:mod:`gluon_quant.graph.stem`).
    int8_lstm : bool or str
        Whether LSTM layers may run in int8 (``QuantConfig.int8_lstm`` and this process
        can run MXNet's int8 LSTM), or the reason they cannot.
    infer_shapes : callable, optional
        ``infer_shapes(graph) -> {(node name, output index): shape}`` at the calibration
        batch size (None when no batch was seen): ``_mxnet.GraphShapes`` in the pipeline.
    rewritten : dict of str to str
        Traced-graph passes that run a node as other operators (a Deconvolution as a
        convolution) record here node name -> what it became, for ``report()``.
    excluded : frozenset of str
        Traced-graph nodes the user's ``exclude`` names: rewrites that exist only to run a
        node in int8 leave them as they are.
    helpers : dict of str to str
        Node the passes added -> the node it was made for (filled by :func:`run_passes`).
    param_value : callable, optional
        ``param_value(name) -> numpy array or None``: a parameter's value when the graph
        was traced (None where it is not initialized), for rewrites whose exact form
        depends on it (:mod:`gluon_quant.graph.prelu`).
    int16_pair_sums : bool
        Whether this process's int8 kernels sum pairs of products in saturating int16
        (:func:`gluon_quant.kernels.int16_pair_sums`; :mod:`gluon_quant.graph.saturation`).
    granularity : str
        ``QuantConfig.granularity`` (``'channel'`` or ``'tensor'``), where a pass needs it.
    """

    spec: BackendSpec
    param_shapes: Mapping[str, tuple] = field(default_factory=dict)
    ranges: Mapping[str, Tuple[float, float]] = field(default_factory=dict)
    infer_dtypes: Optional[Callable[[dict], Dict[str, str]]] = None
    param_rewrites: list = field(default_factory=list)
    int8_lstm: object = False
    infer_shapes: Optional[Callable[[dict], Dict[str, tuple]]] = None
    input_normalization: Optional[tuple] = None
    input_rank: Optional[int] = None
    rewritten: dict = field(default_factory=dict)
    excluded: frozenset = frozenset()
    helpers: dict = field(default_factory=dict)
    fp32_stem: bool = False
    param_value: Optional[Callable[[str], Any]] = None
    int16_pair_sums: bool = False
    granularity: str = "channel"


@dataclass(frozen=True)
class GraphPass:
    """One pass of :data:`PASSES`.

    Attributes
    ----------
    name : str
    stage : Stage
    run : callable
        ``run(graph, context) -> {node name: reason it stays fp32}`` (empty for rewrites);
        edits ``graph`` in place.
    backends : tuple of str
        Backends it applies to (empty: all).
    """

    name: str
    stage: Stage
    run: Callable[[dict, PassContext], Dict[str, str]]
    backends: Tuple[str, ...] = ()


def backend_eligibility(graph, context):
    """Nodes with an operator the backend lists but whose conditions they do not meet, and
    nodes of an operator the backend has no int8 kernel for at all (its ``fp32_ops``, with
    what runs instead).

    A fused node is checked through the operators it contains (the convolution of a fused
    conv+bn+relu).

    Parameters
    ----------
    graph : dict
        The fused fp32 graph.
    context : PassContext

    Returns
    -------
    dict of str to str
        Node name -> why it has no int8 kernel on the backend.
    """
    spec, found = context.spec, {}
    nodes = graph["nodes"]
    ranks = _DataRanks(graph, context)
    for node in nodes:
        if not node.get("subgraphs") or not node["op"].startswith("_sg_"):  # control flow
            reason = spec.fp32_reason(node["op"], describe_op(node["op"], node.get("attrs")))
            if reason is not None:
                found[node["name"]] = reason
                continue
        members = [node] + [m for sub in node.get("subgraphs", ()) or ()
                            for m in sub["nodes"]]
        for member in members:
            support = spec.ops.get(member["op"])
            if support is None:
                continue
            attrs = member.get("attrs") or {}
            form = attrs.get(FP32_FORM_ATTR) or (
                "depth-to-space shuffle" if attrs.get(SHUFFLE_ATTR) else None)
            if form:                # a node a rewrite made, fp32 by design
                found[node["name"]] = spec.fp32_reason(form) or form
                break
            if support.rewrite:     # still here: the rewrite did not apply
                found[node["name"]] = "no int8 %s kernel; not run as %s: %s" % (
                    member["op"], support.rewrite, why_not_rewritten(
                        member, nodes, support, context.param_shapes) or "pass disabled")
                break
            weight = None
            if support.channel_multiple > 1 and len(node["inputs"]) > 1:
                src = nodes[node["inputs"][1][0]]
                weight = known_shape(context.param_shapes.get(src["name"]))
            reason = why_not_int8(support, member.get("attrs") or {}, weight, spec.name,
                                  with_sum=is_true((node.get("attrs") or {}).get("with_sum")),
                                  rank=ranks(node) if member is node and support.ranks
                                  and support.op not in KERNEL_RANK_OPS else None)
            if reason is not None:
                found[node["name"]] = reason
                break
    return found


class _DataRanks:
    """The rank of a node's data input (its first) at the calibration batch's shapes, or
    None; the graph's shapes are inferred once, when first asked."""

    def __init__(self, graph, context):
        self._graph, self._infer, self._shapes = graph, context.infer_shapes, None

    def __call__(self, node):
        if self._infer is None or not node["inputs"]:
            return None
        if self._shapes is None:
            self._shapes = self._infer(self._graph)
        entry = node["inputs"][0]
        shape = self._shapes.get((self._graph["nodes"][entry[0]]["name"], entry[1]))
        return len(shape) if shape else None


def fp32_read_results(graph, context):
    """Nodes of an operator the backend marks ``int8_readers_only`` whose result only fp32
    operators read (or that is an output of the graph): they stay fp32.

    An int8 node between fp32 ones only adds work: its fp32 inputs are quantized and its
    result dequantized at once (:attr:`~gluon_quant.backends.OpSupport.int8_readers_only`
    says what that cost measured). A reader counts as fp32 when the backend has no int8
    kernel for it (its ``fp32_ops``, or an operator MXNet's pass does not quantize: a
    ``transpose``) or :func:`backend_eligibility` keeps it fp32.

    Returns
    -------
    dict of str to str
        Node name -> the backend's reason.
    """
    spec, nodes = context.spec, graph["nodes"]
    marked = {op: s.int8_readers_only for op, s in spec.ops.items() if s.int8_readers_only}
    if not marked:
        return {}
    ineligible = backend_eligibility(graph, context)
    readers = collections.defaultdict(list)
    for node in nodes:
        for entry in node["inputs"]:
            readers[entry[0]].append(node)
    heads = {h[0] for h in graph["heads"]}
    found = {}
    # readers first (the nodes are in topological order): a node kept fp32 here is an
    # fp32 reader of the nodes before it (a pre-LayerNorm transformer's chain of residual
    # sums, each read by a LayerNorm and the next sum, ends in the last one's LayerNorm)
    for index in reversed(range(len(nodes))):
        node = nodes[index]
        reason = marked.get(node["op"])
        if not reason or node["name"] in ineligible:
            continue
        if all(r["name"] in ineligible or r["name"] in found or not spec.has_int8_kernel(
                r["op"]) for r in readers[index]) or (index in heads and not readers[index]):
            found[node["name"]] = reason
    return found


def integer_inputs(graph, context):
    """Nodes that read integer tensors (top-k indices, shapes, casts), which stay fp32.

    MXNet's pass quantizes an ``elemwise_mul`` of two int64 index tensors (CenterNet's
    decoder) and its quantize node refuses int64 only when the graph runs ("Check failed:
    in_attrs->at(0) == mshadow::kFloat32 ..."): int8 quantization is for float tensors.

    Returns
    -------
    dict of str to str
        Node name -> reason.
    """
    if context.infer_dtypes is None:
        return {}
    dtypes = context.infer_dtypes(graph)
    nodes = graph["nodes"]
    found = {}
    for node in nodes:
        if node["op"] == "null":
            continue
        kinds = {entry_dtype(dtypes, nodes, e) for e in node["inputs"]
                 if nodes[e[0]]["op"] != "null" or nodes[e[0]]["name"] not in
                 context.param_shapes}
        integer = sorted(k for k in kinds if k and not k.startswith(("float", "bfloat")))
        if integer:
            found[node["name"]] = ("reads %s tensors; int8 quantization is for float "
                                   "tensors" % "/".join(integer))
    return found


#: Operators (as GraphView describes them) whose output is never negative.
_UNSIGNED_OUTPUTS = ("Activation(relu)", "Activation(sigmoid)", "Activation(softrelu)",
                     "relu", "sigmoid")
#: Operators that keep the sign of their input.
_SIGN_PRESERVING = ("Pooling", "Flatten", "Reshape", "reshape", "expand_dims", "transpose",
                    "Concat", "Dropout")
#: Why a global average pooling of a signed tensor stays fp32 (shown in ``report()``).
SIGNED_POOL_REASON = ("global average of a signed tensor: int8 pooling keeps the input's "
                      "scale and rounds the near-zero means away")


def _emits_unsigned(view, name, depth=0):
    """Whether the node ``name`` of a GraphView provably never outputs negative values."""
    node = view.by_name.get(name)
    if node is None or depth > 16:  # a graph input, or too far to follow: unknown
        return False
    last_op, description = node.members[-1][1], node.members[-1][2]
    if description in _UNSIGNED_OUTPUTS or last_op in _UNSIGNED_OUTPUTS:
        return True
    if last_op == "clip":
        try:
            return float(description[len("clip("):].split(",")[0]) >= 0.0
        except ValueError:
            return False
    if node.op in _SIGN_PRESERVING and node.inputs:
        sources = node.inputs if node.op == "Concat" else node.inputs[:1]
        return all(_emits_unsigned(view, src, depth + 1) for src in sources)
    return False


def signed_global_pools(graph, context=None):  # pylint: disable=unused-argument
    """Global average poolings whose input can be negative, which must stay fp32.

    Parameters
    ----------
    graph : dict or GraphView
        The fused fp32 graph.
    context : PassContext, optional

    Returns
    -------
    dict of str to str
        Node name -> the reason, for ``report()``.
    """
    view = graph if isinstance(graph, GraphView) else GraphView(graph)
    found = {}
    for node in view:
        if (node.op == "Pooling" and is_true(node.attr("global_pool", ""))
                and node.attr("pool_type", "max") == "avg"
                and not _emits_unsigned(view, node.inputs[0])):
            found[node.name] = SIGNED_POOL_REASON
    return found


#: Element-wise comparisons: a tensor compared with its own max pooling picks local peaks.
_COMPARISONS = ("broadcast_equal", "_equal", "broadcast_not_equal", "_not_equal",
                "broadcast_greater_equal", "_greater_equal", "broadcast_lesser_equal",
                "_lesser_equal")
COMPARED_POOL_REASON = ("its output is compared with its own input (peak picking, as "
                        "CenterNet's heatmap NMS): int8 rounding would break the equality "
                        "and drop every peak")


def compared_pools(graph, context=None):  # pylint: disable=unused-argument
    """Max poolings compared with their own input, which must stay fp32.

    ``keep = (maxpool(h) == h)`` keeps the local maxima of ``h``. With the pooling in int8
    its output is rounded to the int8 grid while ``h`` is not, so nothing compares equal:
    a random-weight CenterNet returned class 0 and zero scores for every detection.

    Parameters
    ----------
    graph : dict
        The fused fp32 graph.
    context : PassContext, optional

    Returns
    -------
    dict of str to str
        Node name -> the reason.
    """
    nodes = graph["nodes"]
    found = {}
    for node in nodes:
        if node["op"] not in _COMPARISONS or len(node["inputs"]) != 2:
            continue
        for mine, other in (node["inputs"], node["inputs"][::-1]):
            pool = nodes[mine[0]]
            if (pool["op"] == "Pooling" and pool["inputs"]
                    and list(pool["inputs"][0][:2]) == list(other[:2])
                    and pool.get("attrs", {}).get("pool_type", "max") == "max"):
                found[pool["name"]] = COMPARED_POOL_REASON
    return found


#: Quantized operators whose int8 kernel takes int8 inputs only.
_INT8_ONLY_OPS = ("_contrib_quantized_elemwise_mul",)
#: Members of a fused node that make its int8 output unsigned.
_UNSIGNED_MEMBERS = ("Activation", "clip", "relu")


def int8_mul_inputs(graph, context=None):  # pylint: disable=unused-argument
    """Make every quantize node feeding an int8-only operator emit int8.

    Parameters
    ----------
    graph : dict
        The quantized (uncalibrated) graph, edited in place: those quantize nodes get
        ``out_type='int8'``.
    context : PassContext, optional

    Returns
    -------
    dict of str to str
        Original (fp32 graph) names of int8-only operators fed by a layer that emits
        uint8, which must stay in fp32 -> the reason.
    """
    nodes = graph["nodes"]
    changed, fp32_nodes = 0, {}
    for node in nodes:
        if node["op"] not in _INT8_ONLY_OPS:
            continue
        for src_index, _, _ in node["inputs"][:2]:
            src = nodes[src_index]
            if src["op"] == "_contrib_quantize_v2":
                attrs = src.setdefault("attrs", {})
                if attrs.get("out_type") != "int8":
                    attrs["out_type"] = "int8"
                    changed += 1
            elif any(m["op"] in _UNSIGNED_MEMBERS
                     for sub in src.get("subgraphs", ()) for m in sub["nodes"]):
                name = node["name"][len("quantized_"):] if node["name"].startswith(
                    "quantized_") else node["name"]
                fp32_nodes[name] = ("int8 %s takes int8 inputs only and %s emits uint8"
                                    % (node["op"], src["name"]))
    if changed:
        _log.debug("Set %d quantize node(s) feeding int8-only operators to int8.", changed)
    return fp32_nodes


def calibrated_nodes(graph):
    """``(node name, table key)`` of every node of ``graph`` that carries a calibrated range."""
    nodes = graph["nodes"]
    return [(n["name"], calib_key(n, nodes)) for n in nodes
            if "min_calib_range" in (n.get("attrs") or {})]


#: Operators whose ranges calibration fills even when the quantization pass set none.
RANGED_OPS = ("_contrib_quantize_v2", "_contrib_requantize")


def exact_ranges(graph, context):
    """Rewrite every calibrated range of ``graph`` from the table at full float32 precision.

    On backends whose graph is built in Python (no MXNet calibration step), every quantize
    and requantize node gets its range here.

    Parameters
    ----------
    graph : dict
        A quantized graph (edited in place).
    context : PassContext
        ``context.ranges`` holds the table.

    Returns
    -------
    dict
        Empty.
    """
    add_to = RANGED_OPS if context.spec.quantize_in_python else ()
    nodes = graph["nodes"]
    for node in nodes:
        attrs = node.get("attrs")
        if node["op"] in add_to:
            attrs = node.setdefault("attrs", {})
        elif not attrs or "min_calib_range" not in attrs:
            continue
        key = calib_key(node, nodes)
        if key in context.ranges:
            lo, hi = (np.float32(v) for v in context.ranges[key])
            attrs["min_calib_range"] = repr(float(lo))
            attrs["max_calib_range"] = repr(float(hi))
    return {}


def _unsigned_relu_pass(graph, context):
    # Until none is left: dropping one ReLU can make a later one's input uint8 (an int8 add
    # of two uint8 tensors is uint8, of a uint8 and an int8 one int8).
    while unsigned_relus(graph, context.infer_dtypes(graph)):
        pass
    return {}


#: Every pass, in the order it runs. Tests and users may replace this tuple to switch a
#: pass off (:func:`run_passes` reads it at each call).
def _rewrite(function, **options):
    """A pass running ``function(graph, **options)``, a rewrite that keeps nothing fp32."""
    def run(graph, context):  # pylint: disable=unused-argument
        function(graph, **options)
        return {}
    return run


def _rnn_pass(graph, context):
    return unquantizable_rnns(graph, int8_lstm=context.int8_lstm)


PASSES = (
    GraphPass("unique_names", Stage.TRACED, unique_names),
    GraphPass("identity_chains", Stage.TRACED, identity_chains),
    GraphPass("unit_scalars", Stage.TRACED, unit_scalars),
    GraphPass("small_powers", Stage.TRACED, small_powers),
    GraphPass("self_sums", Stage.TRACED, self_sums),
    GraphPass("written_layernorms", Stage.TRACED, written_layernorms),
    GraphPass("loss_heads", Stage.TRACED, loss_heads),
    GraphPass("channels_first_convolutions", Stage.TRACED, channels_first_convolutions),
    GraphPass("pads_into_convolutions", Stage.TRACED, pads_into_convolutions),
    GraphPass("fold_input_normalization", Stage.TRACED, fold_input_normalization),
    GraphPass("global_adaptive_pools", Stage.TRACED, global_adaptive_pools),
    GraphPass("spatial_reductions", Stage.TRACED, spatial_reductions),
    GraphPass("axis_reductions", Stage.TRACED, axis_reductions),
    GraphPass("tiled_adaptive_pools", Stage.TRACED, tiled_adaptive_pools),
    GraphPass("unsized_global_pools", Stage.TRACED, unsized_global_pools),
    GraphPass("numpy_reshapes", Stage.TRACED, numpy_reshapes),
    GraphPass("swapaxes_as_transpose", Stage.TRACED, swapaxes_as_transpose),
    GraphPass("splits_as_slices", Stage.TRACED, splits_as_slices),
    GraphPass("whole_slices", Stage.TRACED, whole_slices),
    GraphPass("channel_split_convolutions", Stage.TRACED, channel_split_convolutions),
    GraphPass("channel_shuffles", Stage.TRACED, channel_shuffles),
    GraphPass("pixel_shuffles", Stage.TRACED, pixel_shuffles),
    GraphPass("reshapes_as_flatten", Stage.TRACED, reshapes_as_flatten),
    # Before the activation and fusion guards: they see the convolution it makes.
    GraphPass("deconv_as_conv", Stage.TRACED, deconv_as_conv),
    # After it: the depthwise deconvolution it makes stays one (oneDNN's fp32 kernel).
    GraphPass("nearest_upsampling_as_deconv", Stage.TRACED, nearest_upsampling_as_deconv),
    GraphPass("prelu_as_leaky", Stage.TRACED, prelu_as_leaky),
    GraphPass("clamps_as_activations", Stage.TRACED, clamps_as_activations),
    GraphPass("hard_sigmoids", Stage.TRACED, hard_sigmoids),
    GraphPass("norms_as_last_axis_layernorm", Stage.TRACED, norms_as_last_axis_layernorm),
    GraphPass("batchnorm_variants", Stage.TRACED, batchnorm_variants),
    GraphPass("same_shape_adds", Stage.TRACED, same_shape_adds),
    GraphPass("parallel_convolutions", Stage.TRACED, parallel_convolutions),
    GraphPass("numpy_concatenations", Stage.TRACED, numpy_concatenations),
    # Before the folds: the dense layers they make read parameter expressions and biases.
    GraphPass("products_as_dense", Stage.TRACED, products_as_dense),
    GraphPass("affine_into_layers", Stage.TRACED, affine_into_layers),
    # relu, sigmoid, tanh, softsign: oneDNN fuses relu (int8), and runs the others 9-30x
    # faster than MXNet's sigmoid/tanh operators (within an ulp of them).
    GraphPass("canonical_activations", Stage.TRACED, _rewrite(canonical_activations)),
    GraphPass("flatten_fc_inputs", Stage.TRACED,
              _rewrite(flatten_fc_inputs, only_with_squeeze=True), backends=("onednn",)),
    GraphPass("separate_broken_fusions", Stage.TRACED, _rewrite(separate_broken_fusions),
              backends=("onednn",)),
    GraphPass("shared_fusion_outputs", Stage.TRACED, shared_fusion_outputs, backends=("onednn",)),
    GraphPass("fold_parameter_expressions", Stage.TRACED, fold_parameter_expressions),
    GraphPass("fold_dense_batchnorm", Stage.TRACED, fold_dense_batchnorm),
    GraphPass("masked_softmax", Stage.TRACED, masked_softmax),
    GraphPass("lift_1d_to_2d", Stage.TRACED, lift_1d_to_2d, backends=("onednn",)),
    GraphPass("plain_reshaped_inputs", Stage.TRACED, plain_reshaped_inputs, backends=("onednn",)),
    GraphPass("plain_custom_inputs", Stage.TRACED, plain_custom_inputs, backends=("onednn",)),
    GraphPass("backend_eligibility", Stage.FUSED, backend_eligibility),
    GraphPass("fp32_read_results", Stage.FUSED, fp32_read_results),
    GraphPass("fp32_stem", Stage.FUSED, fp32_stem),
    GraphPass("signed_global_pools", Stage.FUSED, signed_global_pools),
    GraphPass("compared_pools", Stage.FUSED, compared_pools),
    GraphPass("integer_inputs", Stage.FUSED, integer_inputs),
    GraphPass("unquantizable_rnns", Stage.FUSED, _rnn_pass, backends=("onednn",)),
    GraphPass("unsized_state_sums", Stage.FUSED, lambda g, c: unsized_state_sums(g)),
    GraphPass("signed_dense_inputs", Stage.FUSED, signed_dense_inputs),
    GraphPass("chained_dequantizes", Stage.QUANTIZED, chained_dequantizes, backends=("onednn",)),
    GraphPass("int8_mul_inputs", Stage.QUANTIZED, int8_mul_inputs),
    GraphPass("small_int8_regions", Stage.QUANTIZED, small_int8_regions, backends=("onednn",)),
    GraphPass("mixed_int8_outputs", Stage.QUANTIZED, mixed_int8_outputs, backends=("onednn",)),
    GraphPass("exact_ranges", Stage.CALIBRATED, exact_ranges),
    GraphPass("exact_ranges", Stage.FINAL, exact_ranges),
    GraphPass("unsigned_relus", Stage.FINAL,
              _unsigned_relu_pass, backends=("onednn",)),
    GraphPass("fused_sum_dtypes", Stage.FINAL, fused_sum_pass, backends=("onednn",)),
    GraphPass("grouped_per_tensor", Stage.FINAL, grouped_per_tensor, backends=("onednn",)),
    GraphPass("stop_rnn_gradients", Stage.FINAL, _rewrite(stop_rnn_gradients),
              backends=("onednn",)),
    GraphPass("int8_max_pools", Stage.FINAL, int8_max_pools, backends=("onednn",)),
    # Last: after the passes that insert requantizes or widen ranges themselves.
    GraphPass("seven_bit_inputs", Stage.FINAL, seven_bit_inputs),
)


def rewritten_param_shapes(graph, context):
    """``context.param_shapes`` with the shapes of the parameters the ``TRACED`` passes
    made (a folded weight), where shape inference on ``graph`` gives them: the backend's
    checks read weight shapes (cuDNN's channel multiples) by the name the layer reads."""
    new = [r.target for r in context.param_rewrites if r.target not in context.param_shapes]
    shapes = context.infer_shapes(graph) if new and context.infer_shapes else {}
    found = {name: shapes[(name, 0)] for name in new if shapes.get((name, 0))}
    return types.MappingProxyType(dict(context.param_shapes, **found)) if found \
        else context.param_shapes


def run_passes(stage, graph, context):
    """Run the passes of ``stage`` on ``graph`` (in place), in :data:`PASSES` order.

    Parameters
    ----------
    stage : Stage
    graph : dict
    context : PassContext

    Returns
    -------
    dict of str to str
        Nodes that must stay fp32 -> reason (the first pass to name a node gives it).
        ``context.helpers`` gets the owner of each node the passes added
        (:func:`~gluon_quant.graph.selection.helper_owners`).
    """
    fp32 = {}
    before = {n["name"] for n in graph["nodes"] if n["op"] != "null"}
    for graph_pass in PASSES:
        if graph_pass.stage is not stage or (
                graph_pass.backends and context.spec.name not in graph_pass.backends):
            continue
        for name, reason in graph_pass.run(graph, context).items():
            fp32.setdefault(name, reason)
    context.helpers.update(helper_owners(graph, before))
    return fp32
