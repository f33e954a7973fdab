"""Built-in checks for known int8 pitfalls, each with a concrete fix.

Every check returns :class:`Finding` entries (and logs each one as a warning):

* ``signed-uint8``: a tensor that takes negative values in a block asked for uint8;
* ``outlier-range``: a calibrated range set by a few outliers (absmax far above the
  99.99th percentile of ``|x|``) with a calibrator that does not clip them;
* ``depthwise-per-tensor``: depthwise convolutions whose weights get one scale per tensor;
* ``small-calibration``: too few calibration batches or samples.

Calibration-free uint8 (ranges computed at run time) cannot happen in gluon_quant:
``quantize()`` refuses to run without calibration data or a calibration table.
"""
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np

from .. import _mxnet
from ..config import Granularity, QuantDtype
from ..errors import ConfigError, GraphError
from ._target import check_target

__all__ = ["Finding", "CheckReport", "run_checks", "MIN_CALIBRATION_BATCHES",
           "MIN_CALIBRATION_SAMPLES", "OUTLIER_RATIO"]

_log = logging.getLogger(__name__)

#: Fewer calibration batches than this is flagged.
MIN_CALIBRATION_BATCHES = 2
#: Fewer calibration samples than this is flagged.
MIN_CALIBRATION_SAMPLES = 32
#: A range more than this many times the 99.99th percentile of |x| is outlier-dominated.
OUTLIER_RATIO = 4.0


@dataclass(frozen=True)
class Finding:
    """One problem found, with what to do about it.

    Attributes
    ----------
    check : str
        The check's id (``'outlier-range'``...).
    severity : str
        ``'error'`` (the result is wrong or refused) or ``'warning'`` (accuracy suffers).
    subject : str
        The tensor, layer or setting concerned.
    message : str
        What is wrong, with the numbers.
    fix : str
        What to do.
    """

    check: str
    severity: str
    subject: str
    message: str
    fix: str


class CheckReport(tuple):
    """A tuple of :class:`Finding`, with ``to_json()`` and a readable ``str()``."""

    def by_check(self, check):
        """The findings of one check."""
        return tuple(f for f in self if f.check == check)

    def to_dict(self):
        """A JSON-safe dict."""
        return {"findings": [asdict(f) for f in self]}

    def to_json(self, **kwargs):
        """The findings as JSON text."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        if not self:
            return "gluon_quant checks: no problem found."
        lines = ["gluon_quant checks: %d finding(s)" % len(self)]
        for f in self:
            lines.append("[%s] %s: %s: %s\n    fix: %s" % (f.severity, f.check, f.subject,
                                                          f.message, f.fix))
        return "\n".join(lines)

    def __repr__(self):
        return "<CheckReport %d findings>" % len(self)


def run_checks(qnet, batches=None, *, log=True):
    """Run every built-in check on a calibrated block.

    Parameters
    ----------
    qnet : QuantizedHybridBlock
        Calibrated (``calibrate()`` run) or finalized; a block whose ``finalize()`` was
        refused (e.g. uint8 for signed tensors) can be checked too.
    batches : None
        Not taken: the checks read the statistics calibration kept. Given (as to the
        doctor's other tools), it is refused with a :class:`ConfigError` that says so.
    log : bool, default True
        Log each finding as a warning.

    Returns
    -------
    CheckReport
    """
    check_target(qnet, "run_checks")
    if batches is not None:
        raise ConfigError(
            "run_checks() takes no batches (got %s): it reads the statistics calibration "
            "kept. Call run_checks(qnet); to measure the int8 net on data, use "
            "debug.compare(qnet, batches) or debug.activation_floor(qnet, batches)."
            % type(batches).__name__)
    table = qnet.calibration_table
    if table is None:
        raise GraphError("run_checks() needs a calibrated block: call calibrate() first, or "
                         "gluon_quant.quantize().")
    findings = (check_signed_uint8(qnet) + check_outliers(qnet) + check_depthwise(qnet)
                + check_calibration_size(qnet))
    if log:
        for f in findings:
            _log.warning("%s: %s: %s Fix: %s", f.check, f.subject, f.message, f.fix)
    return CheckReport(findings)


def check_signed_uint8(qnet):
    """Tensors with negative values in a block created with ``dtype='uint8'``."""
    if qnet.dtype is not QuantDtype.UINT8:
        return []
    table = qnet.calibration_table
    return [Finding(
        check="signed-uint8", severity="error", subject=name,
        message="takes values down to %.4g but dtype='uint8' can only hold values >= 0 "
                "(they would be clipped to 0)." % lo,
        fix="use dtype='auto' (uint8 only where values are never negative) or dtype='int8', "
            "or exclude the layer that produces %r." % name)
        for name, (lo, _) in table.items() if lo < 0]


def check_outliers(qnet):
    """Ranges stretched by a few outliers (needs histogram statistics: calibrators other
    than ``'minmax'``, e.g. ``PercentileCalibrator(percentile=100)`` for min-max ranges)."""
    stats = qnet.calibrator.statistics
    table = qnet.calibration_table
    found = []
    for name, (lo, hi) in table.items():
        st = stats.get(name)
        if st is None or not st.has_histogram or st.count == 0:
            continue
        counts, width = st.magnitude_histogram()
        if width <= 0.0 or counts.sum() <= 0:
            continue
        cum = np.cumsum(counts)
        p9999 = (int(np.searchsorted(cum, 0.9999 * cum[-1])) + 1) * width
        threshold = max(abs(lo), abs(hi))
        if threshold > OUTLIER_RATIO * p9999:
            found.append(Finding(
                check="outlier-range", severity="warning", subject=name,
                message="range %.4g is %.1fx the 99.99th percentile of |x| (%.4g): a few "
                        "outliers spread the int8 steps over values that almost never occur."
                        % (threshold, threshold / p9999, p9999),
                fix="calibrate with calibrator='percentile', 'entropy' or 'mse' (they clip "
                    "outliers), or keep the layer that produces %r in fp32." % name))
    return found


def check_depthwise(qnet):
    """Depthwise convolutions quantized with one weight scale per tensor."""
    if qnet.granularity is not Granularity.TENSOR or qnet.fused_graph is None:
        return []
    nodes = _mxnet.graph_json(qnet.fused_graph)["nodes"]
    found = []
    for node in nodes:
        members = [m for sub in node.get("subgraphs", []) for m in sub["nodes"]] or [node]
        for m in members:
            attrs = m.get("attrs") or {}
            if m["op"] == "Convolution" and int(attrs.get("num_group", "1")) > 1 \
                    and node["name"] not in qnet.exclude:
                found.append(Finding(
                    check="depthwise-per-tensor", severity="warning", subject=node["name"],
                    message="grouped/depthwise convolution (num_group=%s) with one weight "
                            "scale for all its channels: channels with small weights lose "
                            "most of their precision." % attrs["num_group"],
                    fix="quantize with granularity='channel' (one scale per output channel, "
                        "oneDNN default)."))
                break
    return found


def check_calibration_size(qnet):
    """Too few calibration batches or samples (recorded in the table's meta)."""
    meta = qnet.calibration_table.meta
    batches, samples = meta.get("batches"), meta.get("samples")
    if batches is None:
        return []
    if batches >= MIN_CALIBRATION_BATCHES and (samples or 0) >= MIN_CALIBRATION_SAMPLES:
        return []
    return [Finding(
        check="small-calibration", severity="warning", subject="calib_data",
        message="calibrated on %d batch(es), %s sample(s): ranges from so few samples may "
                "not cover the data the model will see." % (batches, samples),
        fix="calibrate on at least %d batches and %d samples that look like the deployment "
            "data (e.g. a few hundred images, with the augmentations used at inference)."
            % (MIN_CALIBRATION_BATCHES, MIN_CALIBRATION_SAMPLES))]
