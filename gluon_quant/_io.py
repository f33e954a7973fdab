"""Files on disk: atomic writes, checksums, and a strict reader of MXNet's params format.

Everything gluon_quant writes goes through :func:`atomic_write` / :func:`atomic_write_many`:
the bytes go to a temporary file in the destination directory, which then replaces the
target in one ``os.replace`` step. Readers see the old file or the new one, never half a
file, and a failure leaves nothing behind.

:func:`parse_ndarray_file` reads the ``mx.nd.save`` format (dense arrays only) in pure
Python, checking every length against the bytes actually there, so that a truncated or
altered file is reported as such instead of reaching MXNet's C++ loader.
"""
import hashlib
import json
import os
import struct
import tempfile

import numpy as np

from .errors import ArtifactError

__all__ = ["atomic_write", "atomic_write_many", "sha256_bytes", "read_bytes",
           "parse_ndarray_file", "loads_json"]

_LIST_MAGIC = 0x112
_NDARRAY_V2_MAGIC = 0xF993FAC9
#: MXNet's dtype flags (mshadow type codes) that a params file may hold.
_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32,
           5: np.int8, 6: np.int64}
_MAX_NDIM = 8


def sha256_bytes(data):
    """Hex sha256 of ``data`` (bytes)."""
    return hashlib.sha256(data).hexdigest()


def loads_json(text):
    """``json.loads(text)``, a nesting too deep for Python (its ``RecursionError``) raised
    as a ``ValueError`` like any other malformed JSON: every reader of a user's JSON file
    (export metadata, graph, calibration table, report, settings) catches ValueError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep to read") from None


def read_bytes(path, what):
    """Read a whole file, turning OS errors into :class:`ArtifactError` naming ``what``."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as err:
        raise ArtifactError("Cannot read the %s %r: %s. Check the path/prefix."
                            % (what, os.fspath(path), err.strerror or err)) from err


def _stage(path, writer):
    """Write ``path``'s new content to a temporary sibling; return the temporary path."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        if isinstance(writer, (bytes, bytearray)):
            with os.fdopen(fd, "wb") as handle:
                handle.write(writer)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            writer(tmp)
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_many(items, what="file", example="name.json"):
    """Write several files so that each appears whole or not at all.

    Parameters
    ----------
    items : list of (str, bytes or callable)
        Target paths with their content: bytes, or ``writer(tmp_path)`` that writes the
        file at ``tmp_path`` (e.g. ``mx.nd.save``).
    what : str
        What is written, for error messages.
    example : str
        A file name the message about a target that names a folder suggests inside it.

    Raises
    ------
    ArtifactError
        When any file cannot be written: every temporary file is removed, and targets
        already moved in place by this call are removed again when they did not exist
        before, so a failed export leaves nothing behind.
    """
    for path, _ in items:
        if not os.path.basename(os.fspath(path)) or os.path.isdir(path):
            raise ArtifactError("Cannot write the %s %r: it names a folder. Give a file path "
                                "(e.g. %r)." % (what, os.fspath(path), os.path.join(
                                    os.fspath(path) or ".", example)))
    staged, placed = [], []
    path = None
    try:
        for path, content in items:
            path = os.fspath(path)
            staged.append((path, _stage(path, content), os.path.exists(path)))
        for path, tmp, existed in staged:
            os.replace(tmp, path)
            placed.append((path, existed))
    except Exception as err:
        for _, tmp, _ in staged:
            _unlink(tmp)
        for done, existed in placed:
            if not existed:
                _unlink(done)
        reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0:1]
        raise ArtifactError(
            "Cannot write the %s %r: %s. Check that the directory exists and is writable."
            % (what, path, reason if isinstance(reason, str) else "".join(reason))) from err


def atomic_write(path, content, what="file", example="name.json"):
    """Write one file atomically (see :func:`atomic_write_many`)."""
    atomic_write_many([(path, content)], what, example)


class _Reader:
    """Bounds-checked little-endian reads over a bytes buffer."""

    def __init__(self, data, path):
        self.data, self.pos, self.path = data, 0, path

    def fail(self, problem):
        raise ArtifactError("The params file %r is corrupt: %s (at byte %d of %d). Export "
                            "the model again." % (self.path, problem, self.pos, len(self.data)))

    def take(self, count, what):
        if count < 0 or self.pos + count > len(self.data):
            self.fail("truncated while reading %s" % what)
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def skip(self, count, what):
        """Advance past ``count`` bytes (checked); return where they start."""
        if count < 0 or self.pos + count > len(self.data):
            self.fail("truncated while reading %s" % what)
        self.pos += count
        return self.pos - count

    def unpack(self, fmt, what):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def parse_ndarray_file(data, path, copy=True):
    """Parse ``mx.nd.save`` bytes (a named list of dense arrays) into numpy arrays.

    Parameters
    ----------
    data : bytes
    path : str
        Shown in error messages.
    copy : bool
        False: the arrays are read-only views of ``data`` (no copy).

    Returns
    -------
    dict of str to numpy.ndarray

    Raises
    ------
    ArtifactError
        On any inconsistency: bad magic numbers, sparse or unknown dtypes, shapes that
        do not fit the bytes, missing or duplicate names, trailing bytes.
    """
    reader = _Reader(data, path)
    magic, _ = reader.unpack("QQ", "the header")
    if magic != _LIST_MAGIC:
        reader.fail("not an MXNet params file (magic %#x)" % magic)
    (count,) = reader.unpack("Q", "the array count")
    if count > len(data) // 24:
        reader.fail("array count %d does not fit in the file" % count)
    arrays = []
    for index in range(count):
        what = "array %d" % index
        magic, stype, ndim = reader.unpack("Iii", what)
        if magic != _NDARRAY_V2_MAGIC or stype != 0:
            reader.fail("%s has an unsupported header (magic %#x, storage %d)"
                        % (what, magic, stype))
        if not 0 < ndim <= _MAX_NDIM:
            reader.fail("%s has %d dimensions" % (what, ndim))
        shape = reader.unpack("%dq" % ndim, what)
        if any(dim < 0 for dim in shape):
            reader.fail("%s has a negative dimension %s" % (what, shape))
        _, _, flag = reader.unpack("iii", what)
        if flag not in _DTYPES:
            reader.fail("%s has an unknown dtype code %d" % (what, flag))
        dtype = np.dtype(_DTYPES[flag])
        size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        start = reader.skip(size, what)
        array = np.frombuffer(data, dtype=dtype, count=size // dtype.itemsize,
                              offset=start).reshape(shape)
        arrays.append(array.copy() if copy else array)
    (num_names,) = reader.unpack("Q", "the name count")
    if num_names != count:
        reader.fail("%d names for %d arrays" % (num_names, count))
    names = []
    for index in range(count):
        (length,) = reader.unpack("Q", "name %d" % index)
        try:
            names.append(reader.take(length, "name %d" % index).decode("utf-8"))
        except UnicodeDecodeError:
            reader.fail("name %d is not UTF-8" % index)
    if reader.pos != len(data):
        reader.fail("%d unexpected trailing bytes" % (len(data) - reader.pos))
    if len(set(names)) != len(names):
        reader.fail("duplicate array names")
    return dict(zip(names, arrays))


def json_default(value):
    """``json.dumps(default=...)`` for numpy scalars (``.item()``) and tuples."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError("not JSON serializable: %r" % (value,))


def write_json(path, obj):
    """Write ``obj`` as JSON atomically (temporary file, then rename), creating the folder;
    return ``path``."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as err:
        raise ArtifactError("Cannot write %r: %s." % (path, err)) from err
    text = json.dumps(obj, indent=1, allow_nan=False, default=json_default) + "\n"
    atomic_write(path, text.encode("utf-8"), what="JSON file")
    return path
