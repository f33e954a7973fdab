"""Read a legacy ``torch.save`` state dict without torch and without trusting the file.

PyTorch before 1.6 (and later versions with ``_use_new_zipfile_serialization=False``)
write a file made of five pickles followed by raw storage bytes:

1. the magic number ``0x1950a86a20f9469cfc6c``;
2. the format version ``1001``;
3. a dict of system information (``little_endian``, type sizes);
4. the saved object, whose storages are pickled as *persistent ids*
   ``("storage", StorageType, key, location, numel, view_metadata)`` and whose
   tensors are rebuilt by ``torch._utils._rebuild_tensor_v2``;
5. the list of storage keys, in the order their bytes follow;

then, for each key, an 8-byte element count and the storage's elements in the
byte order named by the system information.

:func:`load_state_dict` reads that layout with a restricted
:class:`pickle.Unpickler`: its ``find_class`` admits only the tensor-rebuild
function, ``collections.OrderedDict`` and the ``torch.*Storage`` type names (as
inert markers), so no code from the file ever runs.  Each pickle's opcodes are
scanned first (:func:`pickletools.genops`) against an allowlist, with memo
indices bounded, and tensors are checked against their storages, so that a
small crafted file cannot make the loader allocate unbounded memory.  Anything
else in the file, and any malformed or truncated content, raises
:class:`~gluon_quant.errors.ArtifactError`.
"""

import collections
import dataclasses
import io
import logging
import math
import os
import pickle
import pickletools

import numpy as np

from ..errors import ArtifactError

__all__ = ["load_state_dict"]

_LOG = logging.getLogger(__name__)

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_COUNT_BYTES = 8  # each storage's bytes are preceded by an int64 element count
_ZIP_SIGNATURE = b"PK\x03\x04"

# torch storage type name -> numpy dtype code (byte order applied later).
_STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}

# The pickle opcodes a state dict needs.  Checking them before unpickling keeps out
# out-of-band buffers, the copyreg extension registry and object-construction
# opcodes, and lets memo indices be bounded (a huge LONG_BINPUT index makes the C
# unpickler allocate and zero gigabytes).
_ALLOWED_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2",
    "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "EMPTY_LIST", "LIST", "APPEND", "APPENDS", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2",
    "TUPLE3", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS", "FROZENSET",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "BINPERSID",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
})
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
# Together the tensors may hold at most this many times the elements of the
# storages: more is not a state dict but a small file expanding into huge memory.
_MAX_EXPANSION = 16

# Errors the pickle machinery raises on malformed or truncated input.
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    AttributeError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    OverflowError,
    MemoryError,
    RecursionError,
)


class _Malformed(Exception):
    """Internal: the file breaks the format; turned into ArtifactError naming the file."""


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """Marker standing in for a ``torch.*Storage`` class."""

    name: str
    dtype_code: str


@dataclasses.dataclass(frozen=True)
class _StorageRef:
    """A (view of a) storage: ``numel`` elements of root storage ``key`` from ``start``."""

    key: str
    storage_type: _StorageType
    start: int
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """A tensor waiting for its storage bytes, which follow the pickles."""

    storage: _StorageRef
    offset: int
    shape: tuple
    strides: tuple


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(value, what):
    if not isinstance(value, tuple) or not all(_is_int(v) and v >= 0 for v in value):
        raise _Malformed(f"tensor {what} must be a tuple of non-negative ints, got {value!r:.200}")
    return value


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the tensor lives."""
    del requires_grad, backward_hooks, metadata  # meaningless without autograd
    if not isinstance(storage, _StorageRef):
        raise _Malformed(f"tensor rebuilt from {type(storage).__name__}, not a storage")
    if not _is_int(storage_offset) or storage_offset < 0:
        raise _Malformed(f"bad tensor storage offset {storage_offset!r}")
    shape = _int_tuple(size, "size")
    strides = _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise _Malformed(f"tensor size {shape!r} and stride {strides!r} differ in rank")
    numel = math.prod(shape)
    if numel > storage.numel:
        raise _Malformed(f"tensor of size {shape!r} has more elements than its storage "
                         f"({storage.numel}); expanded tensors are not supported")
    if numel:
        last = storage_offset + sum((n - 1) * s for n, s in zip(shape, strides))
        if last >= storage.numel:
            raise _Malformed(
                f"tensor of size {shape!r}, stride {strides!r} at offset {storage_offset} "
                f"overruns its storage of {storage.numel} elements")
    return _TensorRef(storage, storage_offset, shape, strides)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler admitting only the globals a state dict needs.

    Parameters
    ----------
    file : file-like
        Binary stream positioned at a pickle.
    roots : dict or None
        Root storages seen so far (key -> ``_StorageRef``), filled by persistent ids.
        ``None`` for the header pickles, which must not reference storages.
    """

    def __init__(self, file, roots=None):
        super().__init__(file)
        self._roots = roots

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        raise _Malformed(f"refusing to unpickle global {module}.{name}")

    def persistent_load(self, pid):
        if self._roots is None:
            raise _Malformed("unexpected storage reference outside the saved object")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise _Malformed(f"unsupported persistent id {pid!r:.200}")
        _, storage_type, key, _location, numel, view = pid
        if not isinstance(storage_type, _StorageType):
            raise _Malformed(f"storage type {storage_type!r:.100} is not a torch storage type")
        if not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise _Malformed(f"bad storage key {key!r:.100} or size {numel!r:.100}")
        root = self._roots.setdefault(key, _StorageRef(key, storage_type, 0, numel))
        if root.storage_type != storage_type or root.numel != numel:
            raise _Malformed(f"storage {key!r} is declared twice with different types or sizes")
        if view is None:
            return root
        # Files from torch < 1.0 may reference a slice of a root storage.
        if not (isinstance(view, tuple) and len(view) == 3
                and _is_int(view[1]) and _is_int(view[2])):
            raise _Malformed(f"bad storage view {view!r:.200}")
        _, start, size = view
        if start < 0 or size < 0 or start + size > numel:
            raise _Malformed(f"storage view {view!r} lies outside storage {key!r} of {numel}")
        return _StorageRef(key, storage_type, start, size)


def _check_opcodes(stream, what):
    """Scan one pickle without running it: only allowed opcodes, bounded memo indices."""
    try:
        for index, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
            if opcode.name not in _ALLOWED_OPCODES:
                raise _Malformed(f"the {what} pickle uses the disallowed opcode {opcode.name}")
            if opcode.name in _MEMO_PUTS and not 0 <= arg <= index:
                raise _Malformed(f"the {what} pickle stores memo index {arg} "
                                 f"at its opcode {index}")
    except _Malformed:
        raise
    except _PICKLE_ERRORS as err:
        raise _Malformed(f"cannot read the {what} pickle ({type(err).__name__}: {err})") from err


def _load_pickle(stream, what, roots=None):
    start = stream.tell()
    _check_opcodes(stream, what)
    stream.seek(start)
    try:
        return _RestrictedUnpickler(stream, roots).load()
    except _Malformed:
        raise
    except _PICKLE_ERRORS as err:
        raise _Malformed(f"cannot read the {what} pickle ({type(err).__name__}: {err})") from err


def _read_header(stream):
    """Check the three header pickles; return the numpy byte-order character."""
    magic = _load_pickle(stream, "magic number")
    if magic != _MAGIC_NUMBER:
        raise _Malformed(f"bad magic number {magic!r:.100}, not a legacy torch.save file")
    version = _load_pickle(stream, "protocol version")
    if version != _PROTOCOL_VERSION:
        raise _Malformed(f"unsupported protocol version {version!r:.100}, "
                         f"expected {_PROTOCOL_VERSION}")
    sys_info = _load_pickle(stream, "system information")
    if not isinstance(sys_info, dict) or not isinstance(sys_info.get("little_endian"), bool):
        raise _Malformed(f"bad system information {sys_info!r:.200}")
    return "<" if sys_info["little_endian"] else ">"


def _read_storages(data, pos, keys, roots, byteorder):
    """Slice each root storage out of ``data`` (no copy); return key -> 1-D array."""
    arrays = {}
    for key in keys:
        root = roots[key]
        dtype = np.dtype(byteorder + root.storage_type.dtype_code)
        if pos + _COUNT_BYTES > len(data):
            raise _Malformed(f"truncated: the size of storage {key!r} is missing")
        count = int.from_bytes(data[pos:pos + _COUNT_BYTES],
                               "little" if byteorder == "<" else "big", signed=True)
        pos += _COUNT_BYTES
        if count != root.numel:
            raise _Malformed(f"storage {key!r} holds {count} elements, "
                             f"the pickle declared {root.numel}")
        nbytes = count * dtype.itemsize
        if pos + nbytes > len(data):
            raise _Malformed(f"truncated: storage {key!r} needs {nbytes} bytes, "
                             f"{len(data) - pos} left")
        arrays[key] = np.frombuffer(data, dtype=dtype, count=count, offset=pos)
        pos += nbytes
    if pos != len(data):
        raise _Malformed(f"{len(data) - pos} unexpected bytes after the last storage")
    return arrays


def _materialize(ref, arrays):
    """Copy a tensor out of its storage as a C-contiguous, native-order array."""
    base = arrays[ref.storage.key][ref.storage.start:ref.storage.start + ref.storage.numel]
    itemsize = base.dtype.itemsize
    if 0 in ref.shape:
        view = np.empty(ref.shape, dtype=base.dtype)
    else:
        view = np.lib.stride_tricks.as_strided(
            base[ref.offset:], shape=ref.shape,
            strides=tuple(s * itemsize for s in ref.strides), writeable=False)
    return view.astype(base.dtype.newbyteorder("="), order="C", copy=True)


def _parse(data):
    if data.startswith(_ZIP_SIGNATURE):
        raise _Malformed("is a zip-format torch.save file (torch >= 1.6); "
                         "only the legacy format is supported")
    stream = io.BytesIO(data)
    byteorder = _read_header(stream)
    roots = {}
    obj = _load_pickle(stream, "saved object", roots)
    if not isinstance(obj, dict):
        raise _Malformed(f"expected a state dict, the file holds a {type(obj).__name__}")
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _TensorRef):
            raise _Malformed(f"state dict entry {name!r:.100} is not a named tensor "
                             f"({type(value).__name__})")
    total = sum(math.prod(ref.shape) for ref in obj.values())
    if total > _MAX_EXPANSION * max(sum(root.numel for root in roots.values()), 1):
        raise _Malformed(f"the tensors hold {total} elements, over {_MAX_EXPANSION} times "
                         f"those of their storages")
    keys = _load_pickle(stream, "storage keys")
    if (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
            or sorted(keys) != sorted(roots)):
        raise _Malformed(f"the storage key list does not match the {len(roots)} "
                         f"storages the state dict references")
    arrays = _read_storages(data, stream.tell(), keys, roots, byteorder)
    return collections.OrderedDict(
        (name, _materialize(ref, arrays)) for name, ref in obj.items())


def load_state_dict(path):
    """Read a legacy (non-zip) ``torch.save`` file of a state dict, without torch.

    Only the tensor-rebuild function, ``collections.OrderedDict`` and the
    ``torch.*Storage`` type names may appear as pickle globals, so loading an
    untrusted file runs none of its code.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.pth`` file, written by ``torch.save`` in the legacy format
        (torch < 1.6, or ``_use_new_zipfile_serialization=False``).

    Returns
    -------
    collections.OrderedDict of str to numpy.ndarray
        Tensor name -> a C-contiguous array owning its memory, in native byte
        order, with the tensor's shape and dtype (``float32`` for ``FloatStorage``,
        ``int64`` for ``LongStorage``...); non-contiguous tensors are gathered
        through their strides.  Entries keep the file's order.

    Raises
    ------
    ArtifactError
        The file cannot be read, is truncated or malformed, is not a legacy
        ``torch.save`` of a state dict, or names any other pickle global
        (``refusing to unpickle global module.name``).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as err:
        raise ArtifactError(f"cannot read torch weights file {path!r}: {err}") from err
    try:
        state = _parse(data)
    except _Malformed as err:
        raise ArtifactError(f"torch weights file {path!r}: {err}") from err.__cause__
    _LOG.debug("read %d tensors from %s", len(state), path)
    return state
