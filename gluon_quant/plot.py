"""Pictures of a quantization, saved as PNG: histograms with thresholds, per-layer SQNR.

matplotlib is an optional extra (``pip install "gluon_quant[plot]"``); it is imported
only when a plot is made.  Figures are drawn on a private ``Figure`` with the Agg
canvas, never through ``pyplot``, so plotting changes no global matplotlib state (the
backend of a notebook or application stays as it was) and leaks no open figures.

Example::

    qnet = gq.quantize(net, batches)                 # default calibrator: 'mse'
    paths = gq.plot.plot_calibration(qnet, "plots")  # one PNG per calibrated tensor

A tensor the net reads only through max poolings shows the values of its (first) pooling,
on which its range is chosen (:func:`gluon_quant.collect.range_sources`).
"""
import logging
import math
import os
import re

import numpy as np

from .calib import CALIBRATORS, Calibrator
from .errors import ArtifactError, ConfigError

__all__ = ["plot_calibration", "plot_histogram", "plot_thresholds", "plot_sqnr",
           "DEFAULT_METHODS"]

_log = logging.getLogger(__name__)

#: Calibration methods whose thresholds are drawn by default, scored from one pass.
DEFAULT_METHODS = ("minmax", "entropy", "percentile", "mse")
#: Bars drawn per histogram (adjacent statistics bins are summed).
_SHOWN_BINS = 160
_COLORS = {"minmax": "#d62728", "entropy": "#1f77b4", "percentile": "#2ca02c",
           "mse": "#9467bd"}


def _figure(width, height):
    """A fresh Figure on an Agg canvas (no pyplot, no global backend switch)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ConfigError("Plots need matplotlib, which is not installed (%s). Install it "
                          "with: pip install \"gluon_quant[plot]\"." % err) from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path):
    """Write ``fig`` as PNG atomically (temporary file in the same folder, then rename)."""
    from ._io import atomic_write
    path = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as err:
        raise ArtifactError("Cannot write the plot %r: %s." % (path, err)) from err
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), what="plot",
                 example="name.png")
    return path


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_")[:80] or "tensor"


def _calibrator_of(source):
    calibrator = getattr(source, "calibrator", source)
    if not isinstance(calibrator, Calibrator):
        raise ConfigError("Expected a Calibrator or a QuantizedHybridBlock, got %s."
                          % type(source).__name__)
    if not calibrator.names and source is not calibrator and getattr(
            source, "model", None) is not None:
        raise ConfigError("%s has no calibrated tensor to plot: no layer of it runs in "
                          "int8 (print(qnet.report()) says why for each)."
                          % type(source).__name__)
    if not calibrator.names:
        raise ConfigError("%s has no statistics: calibrate (or quantize) first."
                          % type(calibrator).__name__)
    return calibrator


def _tensor_labels(source, labels):
    """``labels`` (a copy), or for a quantized net its report's layer name of each tensor."""
    if labels is None and hasattr(source, "report") and hasattr(source, "calibrator"):
        labels = {r.node + "_output": r.layer for r in source.report()}
    return dict(labels or {})


def method_thresholds(calibrator, methods=DEFAULT_METHODS):
    """Ranges of every method in ``methods``, all scored from ``calibrator``'s one pass.

    Parameters
    ----------
    calibrator : Calibrator
        A histogram calibrator ('mse', 'entropy', 'percentile') that has collected data.
    methods : sequence of str
        Names from :data:`gluon_quant.calib.CALIBRATORS`.

    Returns
    -------
    dict
        ``{method: CalibrationTable}``; the calibrator's own method is always included
        (under its ``method_name``), even a user-defined one.

    Raises
    ------
    ConfigError
        The statistics hold no histogram (a min-max calibrator) or a name is unknown.
    """
    first = next(iter(calibrator.statistics.values()))
    if not first.has_histogram:
        raise ConfigError(
            "%s keeps no histogram, so other methods' thresholds cannot be drawn. Quantize "
            "with a histogram calibrator ('mse', 'entropy' or 'percentile') to plot them."
            % type(calibrator).__name__)
    tables = {}
    for method in methods:
        key = str(method).lower()
        if key not in CALIBRATORS:
            raise ConfigError("Unknown calibration method %r; valid: %s."
                              % (method, ", ".join(sorted(CALIBRATORS))))
        tables[key] = calibrator.rescore(CALIBRATORS[key]).compute()
    tables.setdefault(calibrator.method_name, calibrator.compute())
    return tables


def plot_histogram(stats, thresholds, path, *, title=None):
    """Save the histogram of one tensor with the range each method chose.

    Parameters
    ----------
    stats : TensorStatistics
        Statistics with a histogram (``stats.has_histogram``).
    thresholds : dict
        ``{method: (lo, hi)}`` drawn as vertical lines.
    path : str or os.PathLike
        Where to write the PNG.
    title : str, optional

    Returns
    -------
    str
        ``path``.
    """
    fig = _figure(7.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    hist, bins, width = np.asarray(stats.histogram), stats.bins, stats.bin_width
    if width > 0:
        # Position t + bins counts the values with trunc(x / width) == t.
        lo_bin = int(math.floor(stats.min / width))
        hi_bin = int(math.floor(stats.max / width))
        ticks = np.arange(max(lo_bin, -bins), min(hi_bin, bins) + 1)
        counts = hist[ticks + bins]
        # Sum adjacent bins so that about _SHOWN_BINS bars are drawn: readable, same shape.
        group = max(1, -(-len(ticks) // _SHOWN_BINS))
        pad = (-len(counts)) % group
        counts = np.pad(counts, (0, pad)).reshape(-1, group).sum(axis=1)
        edges = (ticks[0] + np.arange(len(counts)) * group) * width
        ax.fill_between(edges + 0.5 * group * width, np.maximum(counts, 0.5), 0.5,
                        step="mid", color="#7f7f7f", alpha=0.6, linewidth=0)
        ax.set_yscale("log")
    for method, (lo, hi) in thresholds.items():
        color = _COLORS.get(method, "#ff7f0e")
        ax.axvline(hi, color=color, linewidth=1.4, label="%s: %.4g" % (method, hi))
        if lo < 0:
            ax.axvline(lo, color=color, linewidth=1.4, linestyle="--")
    ax.set_xlabel("activation value (min %.4g, max %.4g)" % (stats.min, stats.max))
    ax.set_ylabel("count (log)")
    ax.set_title(title or "histogram", fontsize=10)
    ax.legend(fontsize=8, loc="best", title="threshold", title_fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_thresholds(tables, path, *, labels=None, title=None):
    """Save one chart of every tensor's threshold per method, relative to its largest value.

    A bar at 1.0 keeps the whole observed range; lower bars clip outliers to gain resolution.

    Parameters
    ----------
    tables : dict, QuantizedHybridBlock or Calibrator
        ``{method: CalibrationTable}`` as :func:`method_thresholds` returns, or a quantized
        net or calibrator whose statistics give them (every method of
        :data:`DEFAULT_METHODS`).
    path : str or os.PathLike
    labels : dict, optional
        Tensor name -> label shown on the axis (for a quantized net, its layers' names).
    title : str, optional
    """
    if not isinstance(tables, dict):
        labels = _tensor_labels(tables, labels)
        tables = method_thresholds(_calibrator_of(tables))
    methods = list(tables)
    names = list(next(iter(tables.values())))
    labels = labels or {}
    ref = {n: max(max(abs(v) for v in tables[m][n]) for m in methods) for n in names}
    fig = _figure(8.0, max(2.5, 0.28 * len(names) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(names))
    height = 0.8 / len(methods)
    for k, method in enumerate(methods):
        values = [max(abs(v) for v in tables[method][n]) / (ref[n] or 1.0) for n in names]
        ax.barh(y + k * height, values, height=height, label=method,
                color=_COLORS.get(method, "#ff7f0e"))
    ax.set_yticks(y + 0.4 - height / 2)
    ax.set_yticklabels([labels.get(n, n)[:40] for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("threshold / largest threshold of the methods")
    ax.set_title(title or "calibration thresholds per tensor", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_calibration(source, out_dir, *, methods=DEFAULT_METHODS, names=None, labels=None,
                     max_plots=None):
    """Save per-tensor histograms with each method's threshold, and a summary chart.

    Every method's threshold comes from the statistics of the one calibration pass
    (:meth:`Calibrator.rescore`): no new pass over the data.

    Parameters
    ----------
    source : QuantizedHybridBlock or Calibrator
        A quantized net (its ``calibrator``) or a calibrator that has collected data
        with histograms ('mse', 'entropy', 'percentile').
    out_dir : str or os.PathLike
        Folder for the PNG files (created if needed).
    methods : sequence of str
        Methods whose thresholds are drawn.
    names : sequence of str, optional
        Tensors to draw (default: all calibrated tensors, in calibration order).
    labels : dict, optional
        Tensor name -> title (e.g. the Gluon layer name). For a QuantizedHybridBlock the
        layer names of its report are used.
    max_plots : int, optional
        Draw at most this many histograms.

    Returns
    -------
    list of str
        Paths written: ``thresholds.png`` first, then ``hist_NNN_<tensor>.png``.

    Raises
    ------
    ConfigError
        matplotlib is missing, no statistics, or statistics without histograms.
    ArtifactError
        A file cannot be written.
    """
    calibrator = _calibrator_of(source)
    labels = _tensor_labels(source, labels)
    for name in calibrator.names:
        labels.setdefault(name, name)
    tables = method_thresholds(calibrator, methods)
    selected = [n for n in (names if names is not None else calibrator.names)
                if n in calibrator.statistics]
    if max_plots is not None:
        selected = selected[:max_plots]
    out_dir = os.fspath(out_dir)
    shown = {m: {n: t[n] for n in selected} for m, t in tables.items()}
    paths = [plot_thresholds(shown, os.path.join(out_dir, "thresholds.png"), labels=labels)]
    for i, name in enumerate(selected):
        title = labels[name] if labels[name] == name else "%s (%s)" % (labels[name], name)
        paths.append(plot_histogram(
            calibrator.statistics[name], {m: t[name] for m, t in tables.items()},
            os.path.join(out_dir, "hist_%03d_%s.png" % (i, _safe(labels[name]))), title=title))
    _log.info("Wrote %d calibration plots to %s.", len(paths), out_dir)
    return paths


def _sqnr_rows(rows):
    """``[(label, sqnr_db)]`` from pairs or rows with ``layer`` and ``sqnr_db`` (or ``sqnr``)."""
    if hasattr(rows, "calibrator") or not hasattr(rows, "__iter__"):
        raise ConfigError("plot_sqnr takes per-layer SQNR rows, got %s: pass the doctor's "
                          "comparison, plot_sqnr(gluon_quant.debug.compare(qnet, batches), "
                          "path), or (layer, sqnr_db) pairs." % type(rows).__name__)
    out = []
    for row in rows:
        if isinstance(row, (tuple, list)) and len(row) == 2:
            out.append((str(row[0]), float(row[1])))
        elif hasattr(row, "sqnr_db") or hasattr(row, "sqnr"):
            value = getattr(row, "sqnr_db", None)
            out.append((str(getattr(row, "layer", getattr(row, "name", "?"))),
                        float(value if value is not None else row.sqnr)))
        else:
            raise ConfigError("Expected (layer, sqnr_db) pairs or rows with .layer and .sqnr_db, "
                              "got %r." % (row,))
    return out


def plot_sqnr(rows, path, *, title=None, good_db=20.0):
    """Save a bar chart of per-layer SQNR (dB, higher is better), in the given order.

    Parameters
    ----------
    rows : iterable
        ``(layer, sqnr_db)`` pairs, or the doctor's per-layer rows
        (:class:`gluon_quant.debug.LayerError`, or anything with ``layer`` and ``sqnr_db``),
        e.g. the :class:`~gluon_quant.debug.ComparisonReport` of ``debug.compare``.
    path : str or os.PathLike
        Where to write the PNG.
    title : str, optional
    good_db : float
        Bars below this SQNR are drawn in red, with a dashed line at it.

    Returns
    -------
    str
        ``path``.
    """
    data = _sqnr_rows(rows)
    if not data:
        raise ConfigError("No per-layer SQNR to plot.")
    fig = _figure(8.0, max(2.5, 0.25 * len(data) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    values = np.array([min(v, 99.0) if np.isfinite(v) else 99.0 for _, v in data])
    colors = ["#d62728" if v < good_db else "#2ca02c" for v in values]
    y = np.arange(len(data))
    ax.barh(y, values, color=colors)
    ax.axvline(good_db, color="#7f7f7f", linestyle="--", linewidth=1)
    ax.set_yticks(y)
    ax.set_yticklabels([label[:40] for label, _ in data], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR of int8 vs fp32 activations (dB, higher is better)")
    ax.set_title(title or "per-layer SQNR", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
