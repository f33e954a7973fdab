"""What each int8 backend can run, declared as data.

A :class:`BackendSpec` says, for one runtime (oneDNN on CPU, cuDNN on GPU), which
operators of the fused fp32 graph have an int8 kernel and under which conditions
(:class:`OpSupport`: input rank, layout, groups, dilation, modes, channel alignment),
which MXNet fusion pass runs before and after quantization, which activation dtypes and
weight granularities it takes, and how its graph is quantized. Everything that differs
between backends is read from here: the config's validation, the per-node eligibility
(:func:`why_not_int8`), the cuDNN graph rewrite, the report's "why" column and errors.

Adding a backend is adding a spec to :data:`BACKENDS` (and, if MXNet's own pass cannot
build its graph, a rewrite in :mod:`gluon_quant.graph`).

This module imports nothing else from the package but :mod:`gluon_quant.errors`, so that
:mod:`gluon_quant.config` can validate settings against it.
"""
import ast
import types
from dataclasses import dataclass, field
from typing import FrozenSet, Mapping, Optional, Tuple

from .errors import UnknownNameError

__all__ = ["OpSupport", "BackendSpec", "BACKENDS", "ONEDNN", "CUDNN", "get_spec",
           "KERNEL_RANK_OPS", "why_not_int8"]


@dataclass(frozen=True)
class OpSupport:
    """The conditions under which one fp32 operator runs in int8 on a backend.

    Attributes
    ----------
    op : str
        The fp32 operator (as in the traced graph: ``Convolution``, ``Pooling``...).
    ranks : tuple of int
        Input ranks (batch included) that have a kernel; empty: any. The rank is read from
        the node's ``kernel`` attribute (a 1-D kernel is a rank-3 input), or, for an
        operator without one, from its data input's shape at the calibration batch (not
        checked where that is unknown).
    ranks_why : str
        When not empty: the other ranks have a kernel, but it measured slower than fp32;
        this says so in the report.
    layouts : tuple of str
        Accepted ``layout`` attribute values; empty: any (``None`` counts as the default).
    groups : bool
        Whether grouped (depthwise) convolutions have a kernel.
    partial_groups : str
        When not empty: a convolution with more than one group but fewer groups than
        output channels (grouped, not one group per output channel as a plain depthwise
        convolution) stays fp32, and this says why (a measured defect of the int8 kernel
        with one weight scale per output channel).
    partial_groups_per_tensor : bool
        With ``partial_groups``: such a convolution runs int8 all the same, with one weight
        scale for the whole tensor, where its output can leave it as int32 and be
        requantized after it (:func:`gluon_quant.graph.guards.grouped_per_tensor`); one
        whose output is summed inside the fused node (a residual add) stays fp32.
    dilation : bool
        Whether dilated convolutions have a kernel.
    modes : tuple of (str, tuple of str)
        ``(attribute, accepted values)`` pairs: ``('mode', ('lstm',))`` for RNN.
    flatten : bool or None
        Required value of ``FullyConnected``'s ``flatten`` (None: either).
    channel_multiple : int
        Input and output channel counts must be multiples of this (read from the weight).
    weights : int
        Inputs after the data that are offline-quantized parameters (weight, bias).
    quantized_op : str
        The int8 operator (for backends whose graph is rewritten in Python).
    requantize : bool
        The int8 operator outputs int32, requantized to int8 after it.
    int8_input_only : bool
        Kept int8 only when its input already is int8 (quantizing after a pooling moves
        fewer bytes than before it).
    counts_pad : bool
        Average pooling's int8 kernel always counts padding: ``count_include_pad=False``
        with padding stays fp32.
    disabled : str
        Why the operator stays fp32 on this backend although MXNet has an int8 kernel for
        it (a measured defect); empty when it is used.
    min_island_macs : int
        An int8 region (int8 layers joined by int8 tensors, fp32 around them) whose only
        layer with multiply-adds is this operator stays int8 only when it does at least this
        many per call at the calibration batch size: smaller ones lose more to quantize/
        dequantize than the int8 kernel gains (0: no limit; see
        :mod:`gluon_quant.graph.islands`).
    int8_readers_only : str
        When not empty: a node of the operator is int8 only if some reader of its result
        runs in int8; where every reader is fp32 (or the result is an output) the int8
        kernel would only add a quantize of its inputs and a dequantize of its result, and
        this says what that cost measured (``graph.passes.fp32_read_results``).
    rewrite : str
        When not empty: the operator has no int8 kernel of its own, and the named graph
        rewrite (a pass of ``graph.passes.PASSES``) runs it as operators that have one
        wherever the node meets the other conditions here (oneDNN's ``Deconvolution``:
        ``'deconv_as_conv'``, a convolution and a depth-to-space shuffle).
    min_intensity : int
        With ``rewrite``: a node is rewritten only where it does at least this many
        multiply-adds per value its int8 form moves through fp32 (for a Deconvolution of
        stride ``s``: ``C_in * C_out * k * k / (C_in + s * s * C_out)``, the input
        quantized and the convolution's output dequantized, per input pixel); below it the
        conversions cost more than the int8 kernel gains. 0: no limit.
    """

    op: str
    ranks: Tuple[int, ...] = ()
    ranks_why: str = ""
    layouts: Tuple[str, ...] = ()
    groups: bool = True
    partial_groups: str = ""
    partial_groups_per_tensor: bool = False
    dilation: bool = True
    modes: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    flatten: Optional[bool] = None
    channel_multiple: int = 1
    weights: int = 0
    quantized_op: str = ""
    requantize: bool = False
    int8_input_only: bool = False
    counts_pad: bool = False
    disabled: str = ""
    min_island_macs: int = 0
    int8_readers_only: str = ""
    rewrite: str = ""
    min_intensity: int = 0


@dataclass(frozen=True)
class BackendSpec:
    """Everything the package needs to know about one int8 runtime.

    Attributes
    ----------
    name : str
        ``'onednn'`` or ``'cudnn'``.
    device_type : str
        ``'cpu'`` or ``'gpu'``: where the int8 graph runs.
    ops : mapping of str to OpSupport
        The fp32 operators with an int8 kernel and their conditions. An operator that is
        not listed is left to MXNet's quantization pass (oneDNN) or stays fp32 (cuDNN).
    fusion_pass : str or None
        MXNet subgraph property run on the fp32 graph before quantization and again on the
        calibrated graph (folding quantize/requantize into fused operators); None: none.
    quantize_in_python : bool
        Whether the int8 graph is built by :mod:`gluon_quant.graph.cudnn` instead of MXNet's
        quantization pass (which only quantizes operators with a kernel on this build's
        devices: none on GPU in a CPU build).
    activation_dtypes : tuple of str
        Quantized activation types the kernels take (``'auto'`` picks among them).
    granularities : tuple of str
        Weight scale granularities (``'channel'``, ``'tensor'``); the first is the default.
    bias_correction : bool
        Whether bias correction can be measured here (it runs the int8 graph on the host).
    static_alloc : bool
        Hybridize the int8 block with ``static_alloc``/``static_shape``.
    refusals : mapping of str to str
        Setting (``'dtype=uint8'``, ``'granularity=channel'``) -> why it is refused.
    fused_ops : mapping of str to str
        Fused operators ``fusion_pass`` makes of the fp32 graph -> the operators they stand
        for and the MXNet subgraph property that fuses them (checked against MXNet by the
        tests).
    fp32_ops : mapping of str to str
        Operators (by the report's description, ``'Activation(tanh)'``, or by type,
        ``'LayerNorm'``) that have no int8 kernel here -> what runs instead, the reason
        ``report()`` gives for them.
    pass_quantizes : frozenset of str
        With a ``fusion_pass``: the operators MXNet's quantization pass replaces by int8
        ones (every other operator runs in fp32 on dequantized inputs); empty: ``ops``.
    pair_sum_ops : frozenset of str
        int8 operators whose kernels, where the process's int8 kernels sum pairs of
        products in saturating int16 (oneDNN without VNNI:
        :func:`gluon_quant.kernels.int16_pair_sums`), must read uint8 activations as
        7-bit codes (:mod:`gluon_quant.graph.saturation`); empty: none.
    """

    name: str
    device_type: str
    ops: Mapping[str, OpSupport]
    fusion_pass: Optional[str]
    quantize_in_python: bool
    activation_dtypes: Tuple[str, ...]
    granularities: Tuple[str, ...]
    bias_correction: bool
    static_alloc: bool
    refusals: Mapping[str, str]
    fused_ops: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    fp32_ops: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    pass_quantizes: FrozenSet[str] = frozenset()
    pair_sum_ops: FrozenSet[str] = frozenset()

    def has_int8_kernel(self, op):
        """Whether an operator (by type) can run in int8 here at all."""
        return op in (self.pass_quantizes or self.ops)

    def fp32_reason(self, op, description=None):
        """What runs instead of an operator without an int8 kernel here, or None."""
        return self.fp32_ops.get(description) or self.fp32_ops.get(op)

    @property
    def default_granularity(self):
        """The granularity used when none is given."""
        return self.granularities[0]

    def refusal(self, setting, value):
        """Why ``setting=value`` is refused on this backend, or None."""
        return self.refusals.get("%s=%s" % (setting, value))


def _ops(*supports):
    return types.MappingProxyType({s.op: s for s in supports})


#: oneDNN (MXNet's CPU build): MXNet's own pass quantizes, after its MKLDNN_QUANTIZE fusion.
#: The listed conditions are those under which MXNet 1.9.1's int8 kernels fail at run time
#: although its pass quantizes the node ("mkldnn quantized_conv now supports NCHW or
#: NCDHW", "QuantizedPoolingOp only supports 4D/5D", "Quantized recurrent neural network
#: only supports LSTM").
ONEDNN = BackendSpec(
    name="onednn", device_type="cpu",
    ops=_ops(
        # mkldnn_common.h gives the grouped weights' reorder the per-output-channel scales
        # with mask 1, which on oneDNN's (group, out/group, in/group, ...) weights means one
        # scale per group: group g is quantized with channel g's scale, while the output
        # is requantized with each channel's own.
        OpSupport("Convolution", ranks=(4, 5), layouts=("NCHW", "NCDHW"), partial_groups=(
            "MXNet 1.9.1's int8 convolution with 1 < groups < output channels quantizes "
            "each group's weights with the scale of one channel (its per-channel scales are "
            "applied per group): measured, a channel with 10x smaller weights came out all "
            "zeros and others 1.3-1.9x too large"), partial_groups_per_tensor=True),
        # One dense layer alone in int8 between fp32 layers, by multiply-adds per call,
        # int8/fp32 speed on the EPYC (Zen 5, VNNI) this was measured on, 2 threads:
        # 2k-524k: 0.87-0.98x; 1M: 1.22-1.35x; 2M-4M: 1.36-2.30x. Chains of dense layers
        # gain sooner (benchmarks/any_net.py tabular_mlp, four Dense-BN-ReLU, 427k in all:
        # 1.30x), so the limit is applied to a region with one such layer only.
        OpSupport("FullyConnected", min_island_macs=1 << 20),
        # An int8 'lp' pooling crashed the process (segmentation fault in the first run).
        OpSupport("Pooling", ranks=(4, 5), layouts=("NCHW", "NCDHW"),
                  modes=(("pool_type", ("max", "avg")),)),
        # The int8 BatchNorm reads its channels on axis 1 (a channels-last one, axis=3,
        # failed: "weight_mem.get_desc().get_size() == channel_count * sizeof(float) * 2").
        # A standalone one (after a ReLU, where it cannot fold into the layer before) gains
        # on (N, C, ...) feature maps but loses on (N, C) rows. Measured (Xeon, VNNI; two
        # such BatchNorms between int8 layers, int8 against fp32 BatchNorm, whole net, 1
        # and 2 threads): Conv1D nets 0.52-0.74x the time, Conv2D nets 0.54-0.92x; dense
        # nets 1.6-4.3x the time (batch 64-512, 32-1024 features).
        OpSupport("BatchNorm", ranks=(3, 4, 5), modes=(("axis", ("1",)),), ranks_why=(
            "MXNet 1.9.1's int8 BatchNorm on (N, C) rows is slower than its fp32 one (a "
            "dense net with two of them between int8 layers: 1.6-4.3x the time)")),
        OpSupport("RNN", modes=(("mode", ("lstm",)),)),
        # A sum that oneDNN fuses into a convolution (ResNet's shortcut) is part of that
        # convolution; a standalone one (a transformer's residual, before LayerNorm) is not.
        OpSupport("elemwise_add", int8_readers_only=(
            "its result is read by fp32 operators only: in int8 it quantizes its fp32 input "
            "and its result is dequantized at once (a 4-layer BERT, 256 units, batch 8x128: "
            "1.22x faster with its residual sums in fp32, output cosine 0.99994 instead of "
            "0.99931)")),
        # No int8 Deconvolution kernel in MXNet 1.9.1: a 2-D one runs as an int8
        # convolution + a depth-to-space shuffle (graph/deconv.py). One Deconvolution +
        # BatchNorm + ReLU alone (fp32 in and out), int8 over fp32, 1 thread, by
        # intensity (multiply-adds per value moved, see min_intensity): simple_pose's
        # layers (4x4 stride 2; 512->256 at 8x6, 256->256 at 16x12 and 32x24, batch 8)
        # at 1365 and 819: 2.06-2.42x; 256->128: 683, 2.00x; 192->192: 614, 1.60x;
        # 128->128: 410, 1.40x; 96->96 at 6x6: 307, 0.95x; 64->48 and 48->48 (the
        # trained pose net's head): 192 and 154, 0.73x and 0.85x (that net: 2.51x fp32
        # without the rewrite, 1.61x with it); 64->32 2x2: 43, 0.68x.
        OpSupport("Deconvolution", ranks=(3, 4), layouts=("NCW", "NCHW"), groups=False,
                  dilation=False, rewrite="deconv_as_conv", min_intensity=400),
        OpSupport("elemwise_mul", disabled=(
            "MXNet 1.9.1's int8 elemwise_mul wraps around past the calibrated range instead "
            "of saturating (2.78 became -2.72; Swish between convolutions: 0.974 cosine, "
            "0.9997 with the product in fp32), for a 1.05-1.15x gain")),
    ),
    fusion_pass="MKLDNN_QUANTIZE", quantize_in_python=False,
    activation_dtypes=("int8", "uint8"), granularities=("channel", "tensor"),
    bias_correction=True, static_alloc=True, refusals=types.MappingProxyType({}),
    fused_ops=types.MappingProxyType({
        "_sg_mkldnn_conv": "Convolution (+BatchNorm, activation, residual sum): "
                           "SgMKLDNNConvProperty",
        "_sg_mkldnn_fully_connected": "FullyConnected (+ the relu, GELU or clip after it; "
                                      "a tanh stays apart): SgMKLDNNFCProperty",
        # MKLDNN_QUANTIZE (not only MKLDNN) registers SgMKLDNNTransformerProperty in 1.9.1,
        # and SgMKLDNNTransformerPostQuantizeProperty, which folds the requantize after the
        # int8 matmuls (or the dequantize before an fp32 softmax) into them: the pass this
        # backend already runs before and after quantization is all they need.
        "_sg_mkldnn_selfatt_qk": "_contrib_interleaved_matmul_selfatt_qk (attention scores "
                                 "q.k of GluonNLP's self-attention): "
                                 "SgMKLDNNTransformerProperty",
        "_sg_mkldnn_selfatt_valatt": "_contrib_interleaved_matmul_selfatt_valatt (attention "
                                     "weights times values): SgMKLDNNTransformerProperty",
    }),
    fp32_ops=types.MappingProxyType({
        "LayerNorm": "no int8 LayerNorm in MXNet 1.9.1: it runs in fp32 on the dequantized "
                     "sum before it, and the int8 layers after it quantize its output",
        "softmax": "no int8 softmax in MXNet 1.9.1: it runs in fp32 (an int8 layer before "
                   "it, such as self-attention's q.k matmul, hands it fp32 values, the "
                   "dequantize folded in; an int8 layer after it quantizes its output)",
        "LeakyReLU(gelu)": "GELU has no int8 kernel of its own: it runs fused into the dense "
                           "layer before it wherever that layer is int8, in fp32 elsewhere",
        # Not an operator: the reason graph/deconv.py's shuffle gets (by its attribute).
        "depth-to-space shuffle": "moves data only (a pixel shuffle, or the end of a "
                                  "Deconvolution run as an int8 convolution: a one-hot "
                                  "grouped Deconvolution, 3.4x faster than MXNet's "
                                  "depth_to_space): it runs in fp32 on the dequantized "
                                  "values",
        # Not an operator: the reason graph/upsampling.py's deconvolution gets.
        "nearest upsampling": "copies data only (a nearest upsampling, run as a depthwise "
                              "Deconvolution over a kernel of ones: oneDNN's kernel, 3x "
                              "faster than MXNet's UpSampling): it runs in fp32",
        # Not an operator: the reason graph/pooling.py's sum over axis 1 gets.
        "sum over channels": "a sum or mean over axis 1 (run as a Deconvolution over a "
                             "kernel of ones: oneDNN's kernel, 15-60x faster than MXNet's "
                             "reduction): it runs in fp32",
        "Activation(tanh)": "int8 Activation is relu only in MXNet 1.9.1: tanh runs in fp32",
        "Activation(sigmoid)": "int8 Activation is relu only in MXNet 1.9.1: sigmoid runs in "
                               "fp32",
        # Control flow (F.contrib.foreach / while_loop / cond): MXNet's quantization pass
        # does not enter their subgraphs.
        **{op: "a control-flow operator (F.contrib.%s): MXNet 1.9.1 quantizes nothing "
               "inside its subgraph, which runs in fp32; layers before and after it can be "
               "int8" % name for op, name in (("_foreach", "foreach"),
                                             ("_while_loop", "while_loop"), ("_cond", "cond"))},
    }),
    # MXNet 1.9.1's _contrib_quantized_* operators (no transpose, reshape, slice...) and
    # the fused operators its MKLDNN_QUANTIZE property quantizes.
    pass_quantizes=frozenset((
        "Convolution", "FullyConnected", "Embedding", "Pooling", "Flatten", "Concat",
        "elemwise_add", "elemwise_mul", "BatchNorm", "Activation", "RNN",
        "_sg_mkldnn_conv", "_sg_mkldnn_fully_connected", "_sg_mkldnn_selfatt_qk",
        "_sg_mkldnn_selfatt_valatt")),
    # Without VNNI, oneDNN 2.4.4 multiplies uint8 x int8 with vpmaddubsw (pairs of
    # products summed into saturating int16): a 1x1 convolution and a dense layer with
    # their codes at the largest values returned half the right result (AVX2 EPYC).
    pair_sum_ops=frozenset(("_sg_mkldnn_conv", "_sg_mkldnn_fully_connected")))

#: cuDNN (MXNet's GPU builds): the graph a GPU build's pass produces, built in Python.
#: cuDNN's int8 convolution takes int8 NCHW data, 2-D kernels, one group, no dilation
#: (the kernel ignores it) and channel counts that are multiples of 4; the cuBLAS GEMM
#: needs sizes that are multiples of 4. No Deconvolution entry: the oneDNN rewrite as a
#: convolution (graph/deconv.py) is not measured on a GPU, so deconvolutions stay fp32.
CUDNN = BackendSpec(
    name="cudnn", device_type="gpu",
    ops=_ops(
        OpSupport("Convolution", ranks=(4,), layouts=("NCHW",), groups=False, dilation=False,
                  channel_multiple=4, weights=2, quantized_op="_contrib_quantized_conv",
                  requantize=True),
        OpSupport("FullyConnected", flatten=True, channel_multiple=4, weights=2,
                  quantized_op="_contrib_quantized_fully_connected", requantize=True),
        OpSupport("Pooling", ranks=(4,), layouts=("NCHW",),
                  modes=(("pool_type", ("max", "avg")), ("pooling_convention", ("valid",))),
                  quantized_op="_contrib_quantized_pooling", int8_input_only=True,
                  counts_pad=True),
        OpSupport("Flatten", quantized_op="_contrib_quantized_flatten", int8_input_only=True),
    ),
    fusion_pass=None, quantize_in_python=True,
    activation_dtypes=("int8",), granularities=("tensor",),
    bias_correction=False, static_alloc=False,
    refusals=types.MappingProxyType({
        "dtype=uint8": "MXNet's cuDNN int8 operators take int8 only (\"uint8 quantization "
                       "is only supported by CPU\"). Use dtype='int8' or 'auto' (int8 on "
                       "GPU) with backend='cudnn'.",
        "granularity=channel": "MXNet's cuDNN int8 operators have per-tensor scales only. "
                               "Use granularity='tensor' with backend='cudnn'.",
        "weight_rounding=adaround": "AdaRound hands oneDNN's fused layers fp32 weights on "
                                    "their own int8 grid; cuDNN's weights are quantized "
                                    "offline by MXNet. Use weight_rounding='nearest' with "
                                    "backend='cudnn'.",
    }))

#: Every backend by name (read-only).
BACKENDS = types.MappingProxyType({s.name: s for s in (ONEDNN, CUDNN)})


def get_spec(name) -> BackendSpec:
    """The :class:`BackendSpec` registered as ``name`` (``'onednn'``, ``'cudnn'``).

    Raises
    ------
    UnknownNameError
        Listing the valid names.
    """
    key = getattr(name, "value", name)
    if key in BACKENDS:
        return BACKENDS[key]
    raise UnknownNameError("Unknown backend %r. Valid backends: %s."
                           % (name, ", ".join(repr(k) for k in sorted(BACKENDS))))


def _attr_tuple(attrs, key):
    text = attrs.get(key)
    if text is None or text in ("", "None"):
        return ()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return ()
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _is_true(text, default):
    return default if text is None else str(text).strip().lower() in ("true", "1")


def _input_rank(attrs):
    """The data rank implied by a convolution's or pooling's kernel (None if unknown)."""
    if _is_true(attrs.get("global_pool"), False) and not _attr_tuple(attrs, "kernel"):
        return None
    kernel = _attr_tuple(attrs, "kernel")
    return len(kernel) + 2 if kernel else None


#: Operators whose input rank ``why_not_int8`` reads from their ``kernel`` attribute.
KERNEL_RANK_OPS = ("Convolution", "Pooling", "Deconvolution")


def why_not_int8(support: OpSupport, attrs, weight_shape=None, backend="",
                 with_sum=False, rank=None) -> Optional[str]:
    """Why a node of ``support.op`` cannot run in int8, or None when it can.

    Parameters
    ----------
    support : OpSupport
        The backend's conditions for the operator.
    attrs : dict of str to str
        The node's attributes.
    weight_shape : tuple of int, optional
        Shape of its weight, for channel alignment (None: not known, which fails a
        ``channel_multiple`` condition).
    backend : str
        Backend name, for the message.
    with_sum : bool
        The node is fused with a sum (its output is requantized inside it).
    rank : int, optional
        Rank of the node's data input, for an operator whose attributes do not give it
        (None: not known, not checked).

    Returns
    -------
    str or None
        A short reason for ``report()``.
    """
    where = " on %s" % backend if backend else ""
    if support.disabled:
        return support.disabled
    rank = _input_rank(attrs) if support.op in KERNEL_RANK_OPS else rank
    if support.ranks and rank is not None and rank not in support.ranks:
        if support.ranks_why:
            return "input rank %d: %s" % (rank, support.ranks_why)
        return ("%d-D %s has no int8 kernel%s (input rank %d; int8 needs rank %s)"
                % (rank - 2, support.op, where, rank, "/".join(map(str, support.ranks))))
    layout = attrs.get("layout")
    if support.layouts and layout not in (None, "None") and layout not in support.layouts:
        return "layout %s (int8 needs %s)" % (layout, " or ".join(support.layouts))
    groups = int(attrs.get("num_group", 1))
    if not support.groups and groups != 1:
        return "grouped/depthwise convolution (num_group=%s)" % attrs.get("num_group")
    if support.partial_groups and 1 < groups != int(attrs.get("num_filter", groups)) and (
            with_sum or not support.partial_groups_per_tensor):
        return support.partial_groups
    if not support.dilation and any(d != 1 for d in _attr_tuple(attrs, "dilate")):
        return "dilated convolution (the int8 kernel%s ignores dilation)" % where
    is_global = _is_true(attrs.get("global_pool"), False)
    for key, accepted in support.modes:
        value = attrs.get(key)
        if key == "pooling_convention" and is_global:
            continue    # a global pooling has one output whatever the convention
        if value is not None and value not in accepted:
            return "%s=%s has no int8 kernel%s (int8 supports %s)" % (
                key, value, where, "/".join(accepted))
    if (support.counts_pad and attrs.get("pool_type") == "avg"
            and not _is_true(attrs.get("count_include_pad"), True)
            and any(_attr_tuple(attrs, "pad"))):
        return "count_include_pad=False (int8 averages%s include padding)" % where
    if support.flatten is not None and _is_true(attrs.get("flatten"), True) != support.flatten:
        return "flatten=%s (the int8 GEMM%s needs flatten=%s)" % (
            not support.flatten, where, support.flatten)
    if support.channel_multiple > 1:
        if weight_shape is None:
            return "weight shape unknown (run the net once before quantizing)"
        for what, size in (("input channels" if support.op == "Convolution" else "input size",
                            weight_shape[1]),
                           ("num_filter" if support.op == "Convolution" else "num_hidden",
                            weight_shape[0])):
            if size % support.channel_multiple:
                return "%s %d is not a multiple of %d" % (what, size, support.channel_multiple)
    return None
