"""Presets: which layers of a model family stay in fp32, and why, declared as data.

A :class:`Preset` is a named, frozen list of :class:`KeepFP32` rules. Each rule names
layers the same way ``exclude=`` does (operator types, layer names, attribute paths,
glob patterns) and says why they stay in fp32; a rule with ``downstream=True`` keeps
everything computed *from* the matched layers in fp32 (box decoding, NMS and anchor
arithmetic after a detector's prediction head), not the matched layers themselves.

Presets are applied automatically to networks from the GluonCV model zoo (recognised
by their class) and can be chosen by name for any other network:

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

__all__ = ["KeepFP32", "Preset", "PRESETS", "get_preset", "preset_for", "resolve_preset"]

_log = logging.getLogger(__name__)

#: Module prefix of the networks presets are applied to automatically.
_GLUONCV_ZOO = "gluoncv.model_zoo"


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


@dataclass(frozen=True)
class Preset:
    """A named set of fp32 rules for one model family.

    Attributes
    ----------
    name : str
        Registry name (``'gluoncv-ssd'``).
    description : str
        The family it is for.
    keep_fp32 : tuple of KeepFP32
        The rules, applied in order (the first rule that matches a layer gives its reason).
    classes : tuple of str
        Names of GluonCV classes (anywhere in the network class's MRO) the preset is
        applied to automatically.
    """

    name: str
    description: str
    keep_fp32: Tuple[KeepFP32, ...] = ()
    classes: Tuple[str, ...] = ()

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
    Preset("gluoncv-segmentation",
           "GluonCV semantic segmentation (FCN, PSPNet, DeepLab): the bilinear upsampling "
           "after the head has no int8 kernel and stays fp32 without a rule.",
           keep_fp32=(KeepFP32("head*", "the upsampled per-pixel class scores are compared by "
                               "argmax: they are not requantized after the head",
                               downstream=True),),
           classes=("SegBaseModel",)),
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
    """The preset applied automatically to ``net``: its family's for GluonCV zoo nets, else None."""
    cls = type(net)
    if not cls.__module__.startswith(_GLUONCV_ZOO):
        return None
    names = {c.__name__ for c in cls.__mro__}
    for preset in _PRESET_LIST:
        if names.intersection(preset.classes):
            return preset
    return PRESETS[_ZOO_DEFAULT]


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
