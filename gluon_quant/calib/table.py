"""CalibrationTable: the ``{tensor name: (lo, hi)}`` result of calibration, saved as JSON.

The file format is versioned ``"MAJOR.MINOR"``: a reader accepts any minor version of its
own major version (minor versions only add optional keys) and refuses a newer major one.
Floats are written with Python's shortest round-trip ``repr``, so every range, however
tiny, loads back bit for bit (MXNet wrote 6 decimals and turned tiny ranges into 0).
"""
import hashlib
import json
import math
import os
from collections.abc import Mapping

from .._io import atomic_write, loads_json
from ..errors import ArtifactError, CalibrationTableError

__all__ = ["CalibrationTable", "as_table"]

_FORMAT = "gluon_quant.calibration_table"
_MAJOR, _MINOR = 1, 0
_KEYS = {"format", "version", "method", "fingerprint", "meta", "ranges"}


def _check_range(name, value):
    if not isinstance(name, str) or not name:
        raise CalibrationTableError("Tensor names must be non-empty strings, got %r." % (name,))
    try:
        lo, hi = value
        if isinstance(lo, bool) or isinstance(hi, bool) or isinstance(lo, str) \
                or isinstance(hi, str):
            raise TypeError
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        raise CalibrationTableError(
            "The range of %r must be a pair of numbers (lo, hi), got %r." % (name, value)) \
            from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise CalibrationTableError(
            "The range of %r must be finite with lo < hi, got (%r, %r)." % (name, lo, hi))
    return lo, hi


def _content_sha256(state):
    """sha256 of a table's content in canonical JSON (format, version and sha256 excluded)."""
    content = {key: state[key] for key in ("method", "fingerprint", "meta", "ranges")}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_meta(meta):
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise CalibrationTableError("meta must be a dict, got %s." % type(meta).__name__)
    try:
        # A round trip through JSON checks it is JSON-safe and detaches it from the caller.
        return json.loads(json.dumps(dict(meta), allow_nan=False))
    except (TypeError, ValueError) as err:
        raise CalibrationTableError("meta must be JSON-serializable: %s." % err) from None


class CalibrationTable(Mapping):
    """An immutable mapping ``{tensor name: (lo, hi)}`` of calibrated float ranges.

    Parameters
    ----------
    ranges : Mapping[str, tuple of float] or iterable of (str, (float, float))
        The range of each tensor, in the tensor's units; ``lo < hi``, both finite.
    method : str, optional
        The calibration method that produced the ranges (``'entropy'``...).
    fingerprint : str or None, optional
        Fingerprint of the graph the names refer to (set by the graph code).
    meta : dict or None, optional
        Extra JSON-safe information (stored as a copy).

    Notes
    -----
    Tables compare equal when their ranges, method, fingerprint and meta are equal.
    """

    __slots__ = ("_ranges", "_method", "_fingerprint", "_meta")

    def __init__(self, ranges, *, method="unknown", fingerprint=None, meta=None):
        items = ranges.items() if isinstance(ranges, Mapping) else ranges
        self._ranges = {}
        for name, value in items:
            if name in self._ranges:
                raise CalibrationTableError("Tensor %r appears twice." % (name,))
            self._ranges[name] = _check_range(name, value)
        if not isinstance(method, str) or not method:
            raise CalibrationTableError("method must be a non-empty string, got %r." % (method,))
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise CalibrationTableError(
                "fingerprint must be a string or None, got %r." % (fingerprint,))
        self._method = method
        self._fingerprint = fingerprint
        self._meta = _check_meta(meta)

    # -- Mapping -----------------------------------------------------------------------
    def __getitem__(self, name):
        return self._ranges[name]

    def __iter__(self):
        return iter(self._ranges)

    def __len__(self):
        return len(self._ranges)

    def __eq__(self, other):
        if not isinstance(other, CalibrationTable):
            return NotImplemented
        return (self._ranges == other._ranges and self._method == other._method
                and self._fingerprint == other._fingerprint and self._meta == other._meta)

    __hash__ = None

    def __repr__(self):
        return "CalibrationTable(%d tensors, method=%r, fingerprint=%r)" % (
            len(self), self._method, self._fingerprint)

    # -- attributes --------------------------------------------------------------------
    @property
    def method(self):
        """str: the calibration method that produced the ranges."""
        return self._method

    @property
    def fingerprint(self):
        """str or None: fingerprint of the graph the tensor names refer to."""
        return self._fingerprint

    @property
    def meta(self):
        """dict: extra JSON-safe information (a copy; the table itself never changes)."""
        return json.loads(json.dumps(self._meta))

    # -- derived tables ----------------------------------------------------------------
    def with_fingerprint(self, fingerprint):
        """Return a copy bound to the graph ``fingerprint`` (str or None)."""
        return CalibrationTable(self._ranges, method=self._method, fingerprint=fingerprint,
                                meta=self._meta)

    def merge(self, other):
        """Return the union of two tables; a tensor in both gets the widest range.

        The method becomes ``'mixed'`` when they differ; ``meta`` keys of ``other`` win.

        Raises
        ------
        CalibrationTableError
            If both tables carry fingerprints and they differ (different graphs).
        """
        if not isinstance(other, CalibrationTable):
            raise CalibrationTableError(
                "Can only merge a CalibrationTable, got %s." % type(other).__name__)
        if None not in (self._fingerprint, other._fingerprint) \
                and self._fingerprint != other._fingerprint:
            raise CalibrationTableError(
                "Cannot merge tables of different graphs (fingerprints %r and %r): calibrate "
                "the same network, or drop a fingerprint with with_fingerprint(None) if you "
                "know the tensor names match." % (self._fingerprint, other._fingerprint))
        ranges = dict(self._ranges)
        for name, (lo, hi) in other._ranges.items():
            if name in ranges:
                lo, hi = min(lo, ranges[name][0]), max(hi, ranges[name][1])
            ranges[name] = (lo, hi)
        method = self._method if self._method == other._method else "mixed"
        fingerprint = self._fingerprint if self._fingerprint is not None else other._fingerprint
        return CalibrationTable(ranges, method=method, fingerprint=fingerprint,
                                meta={**self._meta, **other._meta})

    # -- serialization -----------------------------------------------------------------
    def to_dict(self):
        """Return the JSON-safe, versioned dict that :meth:`save` writes.

        ``sha256`` (optional on load) is the checksum of the content (method,
        fingerprint, meta, ranges): a digit changed by a disk error or an edit is refused
        on load instead of silently shifting a range.
        """
        state = {"format": _FORMAT, "version": "%d.%d" % (_MAJOR, _MINOR),
                 "method": self._method, "fingerprint": self._fingerprint,
                 "meta": self.meta,
                 "ranges": {name: [lo, hi] for name, (lo, hi) in self._ranges.items()}}
        state["sha256"] = _content_sha256(state)
        return state

    @classmethod
    def from_dict(cls, state):
        """Build a table from :meth:`to_dict` output, validating structure and version.

        Raises
        ------
        CalibrationTableError
            If ``state`` is malformed or written by a newer major format version.
        """
        if not isinstance(state, dict):
            raise CalibrationTableError("Expected a JSON object, got %s." % type(state).__name__)
        if state.get("format") != _FORMAT:
            raise CalibrationTableError(
                "Not a gluon_quant calibration table (format %r, expected %r)."
                % (state.get("format"), _FORMAT))
        version = state.get("version")
        try:
            major, minor = (int(part) for part in version.split("."))
        except (AttributeError, ValueError):
            raise CalibrationTableError(
                "Bad format version %r (expected 'MAJOR.MINOR')." % (version,)) from None
        if major > _MAJOR:
            raise CalibrationTableError(
                "The table has format version %s, newer than the %d.x this gluon_quant reads: "
                "upgrade gluon_quant." % (version, _MAJOR))
        missing = _KEYS - set(state)
        if missing:
            raise CalibrationTableError("Missing keys: %s." % ", ".join(sorted(missing)))
        if not isinstance(state["ranges"], dict):
            raise CalibrationTableError(
                "'ranges' must be an object {name: [lo, hi]}, got %s."
                % type(state["ranges"]).__name__)
        table = cls(state["ranges"], method=state["method"], fingerprint=state["fingerprint"],
                    meta=state["meta"])
        if "sha256" in state and state["sha256"] != _content_sha256(table.to_dict()):
            raise CalibrationTableError(
                "The table's content does not match its sha256: it was damaged or edited "
                "after it was saved. Calibrate again, or delete the 'sha256' key to accept a "
                "deliberate hand edit.")
        return table

    def save(self, path):
        """Write the table as JSON, atomically.

        The text goes to a temporary file in the destination directory, which then replaces
        ``path`` in one step: readers see the old file or the new one, never a partial one,
        and on failure nothing is left behind.

        Raises
        ------
        ArtifactError
            If the file cannot be written.
        """
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"
        atomic_write(path, text.encode("utf-8"), "calibration table")

    @classmethod
    def load(cls, path):
        """Read a table written by :meth:`save`.

        Raises
        ------
        ArtifactError
            If the file cannot be read.
        CalibrationTableError
            If the file is truncated, not JSON, malformed or of a newer major version; the
            message names the file and the problem.
        """
        path = os.fspath(path)
        try:
            with open(path, "rb") as handle:
                text = handle.read()
        except OSError as err:
            raise ArtifactError("Cannot read the calibration table %r: %s." % (path, err)) \
                from err
        try:
            state = loads_json(text)
        except ValueError as err:
            raise CalibrationTableError(
                "%r is not a valid calibration table (truncated or not JSON: %s)." % (path, err)) \
                from None
        try:
            return cls.from_dict(state)
        except CalibrationTableError as err:
            raise CalibrationTableError("%r: %s" % (path, err)) from None


def as_table(table):
    """``table`` as a :class:`CalibrationTable`: a table as it is, a path (str or
    ``os.PathLike``) read with :meth:`CalibrationTable.load`, None as None.

    Raises
    ------
    CalibrationTableError
        ``table`` is something else, or the file is not a valid table.
    ArtifactError
        The file cannot be read.
    """
    if table is None or isinstance(table, CalibrationTable):
        return table
    if isinstance(table, (str, os.PathLike)):
        return CalibrationTable.load(table)
    raise CalibrationTableError("Expected a CalibrationTable or the path of a saved one "
                                "(CalibrationTable.save), got %s." % type(table).__name__)
