"""Presets: what a model family needs to quantize well, declared as data.

A :class:`Preset` is a named, frozen record of three kinds of rules:

* :class:`KeepFP32` rules name layers the same way ``exclude=`` does (operator types,
  layer names, attribute paths, glob patterns) and say why they stay in fp32; a rule with
  ``downstream=True`` keeps everything computed *from* the matched layers in fp32 (box
  decoding, NMS and anchor arithmetic after a detector's prediction head), not the matched
  layers themselves.
* :class:`ClipRange` rules bound the calibrated range of what some operators output (the
  GELU and LayerNorm outputs of BERT), whatever the calibrator chose.
* ``inputs`` names the ``hybrid_forward`` arguments the family's batches feed, in order,
  so that a tuple batch with a label after them is read without a ``num_inputs=`` hint
  (BERT's ``(tokens, token_types, valid_length, label)``).

Presets are applied automatically to networks from the GluonCV and GluonNLP model zoos
(recognised by their class) and can be chosen by name for any other network:

>>> qnet = gluon_quant.quantize(net, calib, preset="gluoncv-ssd")
>>> print(qnet.report())        # preset layers show the preset's reason

``preset="none"`` turns presets off.
"""
import logging
import types
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ._names import suggest
from .errors import ConfigError, UnknownNameError
from .graph.passes import downstream_nodes
from .graph.selection import resolve_exclusions

__all__ = ["KeepFP32", "ClipRange", "Preset", "PRESETS", "get_preset", "preset_for",
           "resolve_preset"]

_log = logging.getLogger(__name__)

#: Module prefixes of the model zoos whose networks get their preset automatically.
_GLUONCV_ZOO = "gluoncv.model_zoo"
_GLUONNLP_ZOO = "gluonnlp.model"


@dataclass(frozen=True)
class KeepFP32:
    """One rule of a preset: layers that stay in fp32.

    Attributes
    ----------
    pattern : str
        Operator type, layer/block name, attribute path or glob pattern, with the
        syntax of ``quantize(exclude=...)``.
    reason : str
        Why these layers stay in fp32 (shown in ``report()``).
    downstream : bool
        Keep every layer fed (directly or not) by the matched layers in fp32, rather
        than the matched layers themselves.
    """

    pattern: str
    reason: str
    downstream: bool = False


#: Operators whose output holds only values of their (first) input: a bound carries over.
_MOVES_VALUES = ("transpose", "Reshape", "reshape", "expand_dims", "Flatten", "flatten",
                 "slice", "slice_axis", "squeeze", "SwapAxis")


@dataclass(frozen=True)
class ClipRange:
    """One calibration rule of a preset: a bound on the range of some operators' outputs.

    After the calibrator has chosen a range ``[lo, hi]`` for the output of a matched node,
    ``lo`` is raised to ``low`` and ``hi`` lowered to ``high`` (where given). The bound
    holds whatever the calibrator, and for tables loaded with ``calib_table=``.

    Attributes
    ----------
    output_of : str
        The operator whose output is bounded, as the report describes it
        (``'LayerNorm'``, ``'LeakyReLU(gelu)'``, ``'Activation(relu)'``) or its operator type:
        a node matches when it computes its output with that operator (the last member of
        a fused node, so ``FullyConnected+LeakyReLU(gelu)`` matches ``'LeakyReLU(gelu)'``).
    reason : str
        Why (shown in ``report()``).
    low, high : float, optional
        The bounds (None: that end is not bounded).
    """

    output_of: str
    reason: str
    low: Optional[float] = None
    high: Optional[float] = None

    def matches(self, node):
        """Whether a :class:`~gluon_quant.graph.GraphNode` computes its output with the operator."""
        _, op, description = node.members[-1]
        return self.output_of in (op, description)

    def describe(self):
        """``'max 10'``, ``'min -50'`` or ``'[-5, 5]'``."""
        if self.low is not None and self.high is not None:
            return "[%g, %g]" % (self.low, self.high)
        return "min %g" % self.low if self.low is not None else "max %g" % self.high


@dataclass(frozen=True)
class Preset:
    """A named set of rules for one model family.

    Attributes
    ----------
    name : str
        Registry name (``'gluoncv-ssd'``).
    description : str
        The family it is for.
    keep_fp32 : tuple of KeepFP32
        The rules, applied in order (the first rule that matches a layer gives its reason).
    classes : tuple of str
        Names of model-zoo classes (anywhere in the network class's MRO) the preset is
        applied to automatically.
    zoo : str
        Module prefix of the zoo those classes come from (the network's own class must be
        defined under it).
    clip_ranges : tuple of ClipRange
        Bounds on calibrated ranges, applied in order (a later rule can only narrow).
    inputs : tuple of str
        The ``hybrid_forward`` arguments the family's tuple batches feed, in order; batch
        elements after them are labels. Empty: read from the signature (optional inputs
        then need a hint when a tuple batch has extra elements).
    input_ranks : tuple of int
        The rank of each of ``inputs``: a tuple batch whose elements have other ranks is
        refused with the ``input_fn=`` that reorders it (GluonNLP's BERTSentenceTransform
        yields ``(input_ids, valid_length, segment_ids)``, BERTModel takes ``(inputs,
        token_types, valid_length)``). Empty: not checked.
    """

    name: str
    description: str
    keep_fp32: Tuple[KeepFP32, ...] = ()
    classes: Tuple[str, ...] = ()
    zoo: str = _GLUONCV_ZOO
    clip_ranges: Tuple[ClipRange, ...] = ()
    inputs: Tuple[str, ...] = ()
    input_ranks: Tuple[int, ...] = ()

    def select(self, graph, scopes) -> Dict[str, str]:
        """Nodes of ``graph`` this preset keeps in fp32.

        Parameters
        ----------
        graph : GraphView
            The fused fp32 graph.
        scopes : list of BlockScope
            The network's blocks (:func:`gluon_quant.graph.block_scopes`).

        Returns
        -------
        dict of str to str
            Node name -> ``"preset 'NAME': REASON"``.
        """
        chosen = {}
        for rule in self.keep_fp32:
            matched, _ = resolve_exclusions([rule.pattern], graph, scopes, warn_unmatched=False)
            nodes = downstream_nodes(graph, matched) if rule.downstream else set(matched)
            for name in sorted(nodes):
                chosen.setdefault(name, "preset %r: %s" % (self.name, rule.reason))
        if self.keep_fp32:
            _log.info("Preset %r keeps %d layer(s) in fp32.", self.name, len(chosen))
        return chosen

    def range_bounds(self, graph) -> Dict[str, Tuple[Optional[float], Optional[float], str]]:
        """The bounds this preset puts on calibrated ranges of ``graph``'s tensors.

        A bound on a node's output also holds for the layout operators that only move its
        values (a ``transpose`` or ``reshape`` of a LayerNorm output), whose output is what
        gets calibrated when they stand between the node and an int8 layer.

        Parameters
        ----------
        graph : GraphView
            The fused fp32 graph.

        Returns
        -------
        dict of str to (float or None, float or None, str)
            Tensor key (``NODE_output``, as in calibration tables) -> ``(low, high,
            "preset 'NAME': bound: REASON")``; several rules on one tensor are combined.
        """
        bounds = {}
        for node in graph:      # in topological order: a source is seen before its users
            for rule in self.clip_ranges:
                if not rule.matches(node):
                    continue
                key = node.name + "_output"
                low, high, reasons = bounds.get(key, (None, None, ()))
                if rule.low is not None:
                    low = rule.low if low is None else max(low, rule.low)
                if rule.high is not None:
                    high = rule.high if high is None else min(high, rule.high)
                bounds[key] = (low, high, reasons + ("%s: %s" % (rule.describe(), rule.reason),))
            source = node.inputs[0] + "_output" if node.inputs else None
            if node.op in _MOVES_VALUES and source in bounds:
                bounds.setdefault(node.name + "_output", bounds[source])
        return {k: (lo, hi, "preset %r: range %s" % (self.name, "; ".join(why)))
                for k, (lo, hi, why) in bounds.items()}


_AFTER_HEAD = ("detection post-processing (box decoding, score activation, anchors, NMS) "
               "needs fp32 precision: coordinates and scores of very different ranges would "
               "share one int8 scale")

_PRESET_LIST = (
    Preset("none", "No layer kept in fp32 beyond what the backend cannot run in int8."),
    Preset("gluoncv-classification",
           "GluonCV image classifiers (ResNet v1/v1b/v2, MobileNet v1/v2/v3, VGG, SE-ResNet, "
           "...): every convolution and dense layer in int8; signed inputs (ResNet v2's "
           "first convolution) are handled by dtype='auto' choosing int8."),
    Preset("gluoncv-mobilenetv3", "GluonCV MobileNetV3 (large and small).",
           keep_fp32=(KeepFP32("elemwise_mul", "the hard-swish product x * relu6(x + 3) / 6 "
                               "loses too much in MXNet's int8 elemwise_mul (mobilenetv3_large "
                               "logit cosine 0.41 with it in int8, 0.89 in fp32); the "
                               "convolutions around it stay int8"),),
           classes=("_MobileNetV3",)),
    Preset("gluoncv-ssd", "GluonCV SSD detectors.",
           keep_fp32=(KeepFP32("class_predictors*", _AFTER_HEAD, downstream=True),
                      KeepFP32("box_predictors*", _AFTER_HEAD, downstream=True),
                      KeepFP32("anchor_generators*", "anchor coordinates feed box decoding; "
                               "MXNet's flow concatenates them in int8", downstream=True)),
           classes=("SSD",)),
    Preset("gluoncv-yolo3", "GluonCV YOLOv3 detectors.",
           keep_fp32=(KeepFP32("yolo_outputs.*.prediction", _AFTER_HEAD, downstream=True),),
           classes=("YOLOV3",)),
    Preset("gluoncv-rcnn", "GluonCV Faster R-CNN and Mask R-CNN: backbone, RPN head, the "
           "per-ROI stage after ROIAlign and both predictors in int8; proposals, ROIAlign and "
           "box decoding in fp32. Calibrate with batches of the net's batch_size (its graph "
           "takes only that size).",
           keep_fp32=(KeepFP32("rpn.region_proposer*", (
               "proposal decoding adds box deltas to anchor coordinates (hundreds of pixels) "
               "before clipping and NMS: MXNet's flow ran that sum as an int8 elemwise_add "
               "sharing one scale between pixel offsets and coordinates")),
                      KeepFP32("rpn.anchor_generator*", "anchor coordinates feed proposal "
                               "decoding"),
                      KeepFP32("class_predictor", _AFTER_HEAD, downstream=True),
                      KeepFP32("box_predictor", _AFTER_HEAD, downstream=True)),
           classes=("RCNN",)),
    Preset("gluoncv-centernet", "GluonCV CenterNet: backbone, upsampling convolutions and "
           "the three heads in int8; heatmap sigmoid, peak picking and top-k decoding in fp32 "
           "(the peak picking's max pooling runs as int8 pooling of the heatmap's int8 "
           "logits, the same values).",
           keep_fp32=(KeepFP32("heads*", (
               "the heatmap's peaks are picked by comparing it with its own max pooling and "
               "box sizes and offsets are gathered at the peaks: exact fp32 comparisons "
               "and coordinates"), downstream=True),),
           classes=("CenterNet",)),
    Preset("gluoncv-segmentation",
           "GluonCV semantic segmentation (FCN, PSPNet, DeepLab): the bilinear upsampling "
           "after the head has no int8 kernel and stays fp32 without a rule.",
           keep_fp32=(KeepFP32("head*", "the upsampled per-pixel class scores are compared by "
                               "argmax: they are not requantized after the head",
                               downstream=True),),
           classes=("SegBaseModel",)),
    Preset("gluonnlp-bert",
           "GluonNLP BERT (BERTModel and its RoBERTa and DistilBERT, BERTClassifier, "
           "RoBERTaClassifier, BERTEncoder): every dense layer and both self-"
           "attention matmuls in int8 (oneDNN's fused _sg_mkldnn_selfatt_qk/_valatt); GELU "
           "fused into its dense layer; LayerNorm and softmax stay fp32 (no int8 kernel), "
           "and so do the residual sums and embeddings around them. "
           "Tuple batches are (tokens, token_types, valid_length, label), the order "
           "BERTModel takes ((tokens, valid_length, label) for RoBERTa and DistilBERT, "
           "which take no token types); GluonNLP's BERTSentenceTransform order (input_ids, "
           "valid_length, segment_ids) is refused with the input_fn= that reorders it.",
           classes=("BERTModel", "BERTClassifier", "RoBERTaClassifier", "BERTEncoder"),
           zoo=_GLUONNLP_ZOO,
           inputs=("inputs", "token_types", "valid_length"), input_ranks=(2, 2, 1),
           keep_fp32=(
               KeepFP32("elemwise_add", (
                   "residual sums feed LayerNorm, which runs in fp32: an int8 sum is "
                   "requantized, then dequantized again, while in fp32 the dense layer "
                   "before it hands over its fp32 output (4-layer BERT-base width, batch 8 x "
                   "128: output cosine 0.9993 -> 0.9998, 6% faster)")),
               KeepFP32("Embedding", (
                   "an int8 embedding is a lookup of rounded rows that fp32 sums read: it "
                   "saves no time and adds rounding to every token (with the sums in fp32: "
                   "cosine 0.99983 -> 0.99988, 2% faster)"))),
           clip_ranges=(
               ClipRange("LeakyReLU(gelu)", high=10.0, reason=(
                   "GluonNLP's own BERT int8 calibration caps GELU outputs at 10 "
                   "(scripts/bert BertLayerCollector(clip_max=10)): a few large values must "
                   "not set the scale of the dense layer that reads them")),
               ClipRange("LayerNorm", low=-50.0, reason=(
                   "GluonNLP's own BERT int8 calibration floors LayerNorm outputs at -50 "
                   "(scripts/bert BertLayerCollector(clip_min=-50)): a few large negative "
                   "values must not set the scale of the dense layer that reads them")))),
)

#: Every preset by name (read-only).
PRESETS = types.MappingProxyType({p.name: p for p in _PRESET_LIST})

#: Preset of GluonCV networks that no family preset claims.
_ZOO_DEFAULT = "gluoncv-classification"


def get_preset(name) -> Preset:
    """The preset registered under ``name``.

    Parameters
    ----------
    name : str

    Returns
    -------
    Preset

    Raises
    ------
    UnknownNameError
        No preset has that name; the message lists the valid names.
    """
    if isinstance(name, str) and name.strip().lower() in PRESETS:
        return PRESETS[name.strip().lower()]
    valid = sorted(PRESETS)
    raise UnknownNameError("Unknown preset %r. Valid presets: %s.%s"
                           % (name, ", ".join(repr(v) for v in valid), suggest(name, valid)))


def preset_for(net) -> Optional[Preset]:
    """The preset applied automatically to ``net``: its family's for GluonCV and GluonNLP zoo
    nets (``gluoncv-classification`` for a GluonCV net no family claims), else None."""
    cls = type(net)
    names = {c.__name__ for c in cls.__mro__}
    for preset in _PRESET_LIST:
        if cls.__module__.startswith(preset.zoo) and names.intersection(preset.classes):
            return preset
    return PRESETS[_ZOO_DEFAULT] if cls.__module__.startswith(_GLUONCV_ZOO) else None


def resolve_preset(preset, net) -> Optional[Preset]:
    """Turn the ``preset=`` argument into a :class:`Preset` (or None for no rules).

    ``None`` picks the preset for ``net`` automatically (:func:`preset_for`); a string is
    looked up in the registry; a :class:`Preset` is used as given.
    """
    if preset is None:
        return preset_for(net)
    if isinstance(preset, Preset):
        return preset
    if not isinstance(preset, str):
        raise ConfigError("preset must be a preset name (%s), a Preset or None, got %r."
                          % (", ".join(repr(v) for v in sorted(PRESETS)), preset))
    return get_preset(preset)
