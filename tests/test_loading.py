"""Fast loading of int8 exports: the calibration table as text (since format 2.1), 2.0
files still loading, parameters adopted without copies, the checksum on a second thread,
the one-pass unpacking of packed weights, and format 3.0's stored anchor positions."""
import json

import mxnet as mx
import numpy as np
import pytest

import gluon_quant as gq
from gluon_quant import _mxnet, _packing
from gluon_quant._io import parse_ndarray_file
from gluon_quant.errors import ArtifactError, CalibrationTableError


@pytest.fixture
def exported(tiny_cnn, tiny_batches, tmp_path):
    qnet = gq.quantize(tiny_cnn, tiny_batches, progress=False)
    prefix = str(tmp_path / "m")
    return prefix, qnet.export(prefix), qnet


def _x():
    return mx.nd.array(np.random.RandomState(3).rand(5, 1, 28, 28).astype("float32"))


def _edit_meta(paths, change):
    meta = json.load(open(paths["meta"]))
    change(meta)
    json.dump(meta, open(paths["meta"], "w"))


def test_format_2_1_keeps_the_table_as_text_and_2_0_files_still_load(exported):
    prefix, paths, qnet = exported
    meta = json.load(open(paths["meta"]))
    assert meta["version"] == "3.2" and meta["calibration_table"] is None
    assert gq.CalibrationTable.from_dict(json.loads(meta["calibration_table_text"])) \
        == qnet.calibration_table
    expected = qnet(_x()).asnumpy()

    def as_2_0(meta):              # what format 2.0 wrote: the table as a JSON object
        meta.update(version="2.0",
                    calibration_table=json.loads(meta.pop("calibration_table_text")))
    _edit_meta(paths, as_2_0)
    loaded = gq.QuantizedSymbolBlock.imports(prefix)
    assert loaded.metadata["version"] == "2.0"
    assert loaded.calibration_table == qnet.calibration_table
    assert np.array_equal(loaded(_x()).asnumpy(), expected)


def test_a_damaged_table_is_refused_when_read(exported):
    prefix, paths, qnet = exported
    expected = qnet(_x()).asnumpy()
    text = json.load(open(paths["meta"]))["calibration_table_text"]
    name = next(iter(qnet.calibration_table))
    lo, hi = qnet.calibration_table[name]
    edited = text.replace(json.dumps(hi), json.dumps(hi * 2), 1)
    assert edited != text
    _edit_meta(paths, lambda meta: meta.update(calibration_table_text=edited))
    # the ranges in use are the graph's: the model loads and runs as exported ...
    loaded = gq.QuantizedSymbolBlock.imports(prefix)
    assert np.array_equal(loaded(_x()).asnumpy(), expected)
    # ... and the table, whose own sha256 no longer matches, is refused when read
    with pytest.raises(CalibrationTableError, match=r"m-meta\.json.*sha256"):
        loaded.calibration_table
    _edit_meta(paths, lambda meta: meta.update(calibration_table_text=text[:50]))
    with pytest.raises(CalibrationTableError, match=r"m-meta\.json.*not valid JSON"):
        gq.QuantizedSymbolBlock.imports(prefix).calibration_table
    _edit_meta(paths, lambda meta: meta.update(calibration_table_text=7))
    with pytest.raises(ArtifactError, match=r"m-meta\.json' is malformed.*calibration_table"):
        gq.QuantizedSymbolBlock.imports(prefix)


def test_parameters_are_adopted_as_loaded_without_gradients(exported):
    prefix, paths, qnet = exported
    loaded = gq.QuantizedSymbolBlock.imports(prefix)
    params = loaded.collect_params()
    arrays = parse_ndarray_file(open(paths["params"], "rb").read(), paths["params"])
    plain = json.load(open(paths["meta"]))["plain"]
    start = 0
    for entry in plain:                      # the plain parameters, bit for bit
        stop = start + int(np.prod(entry["shape"]))
        value = params[entry["name"]].data()
        assert value.shape == tuple(entry["shape"]) and value.dtype == np.float32
        assert np.array_equal(value.asnumpy(),
                              arrays["plain:float32"][start:stop].reshape(entry["shape"]))
        start = stop
    assert start == arrays["plain:float32"].size
    for param in params.values():
        assert param.grad_req == "null" and param.list_ctx() == [mx.cpu()]
        with pytest.raises(RuntimeError, match="grad_req='null'"):
            param.grad()
    # each parameter owns its memory: changing one leaves the others and the file alone
    name = plain[0]["name"]
    params[name].set_data(params[name].data() + 1)
    again = gq.QuantizedSymbolBlock.imports(prefix).collect_params()
    assert np.array_equal(again[name].data().asnumpy() + 1, params[name].data().asnumpy())
    other = plain[1]["name"]
    assert np.array_equal(again[other].data().asnumpy(), params[other].data().asnumpy())


def test_adopt_params_checks_names_and_known_shapes():
    data = mx.sym.var("data")
    block = mx.gluon.SymbolBlock(mx.sym.FullyConnected(data, mx.sym.var("w"), num_hidden=4,
                                                       no_bias=True), [data])
    block.collect_params()["w"].shape = (4, 0)          # known in part, as Gluon infers
    with pytest.raises(gq.GraphError, match="needs parameters.*w"):
        _mxnet.adopt_params(block, {})
    with pytest.raises(gq.GraphError, match=r"'w' has shape \(3, 3\).*\(4, 0\)"):
        _mxnet.adopt_params(block, {"w": mx.nd.ones((3, 3))})
    value = mx.nd.ones((4, 3))
    _mxnet.adopt_params(block, {"w": value})
    assert block.collect_params()["w"].data() is value            # no copy
    assert np.array_equal(block(mx.nd.ones((2, 3))).asnumpy(), np.full((2, 4), 3.0))


def _packs():
    rs = np.random.RandomState(0)
    packs, params = [], {}
    for number, shape in enumerate([(8, 4, 3, 3), (5, 7)]):
        name = "w%d" % number
        params[name] = (rs.randn(*shape) * 0.1).astype(np.float32)
        params[name][2] = 0.0                                   # a dead channel
        packs.append(_packing.pack(_packing.PackSpec(name, True), params))
    return packs, params


def test_split_into_given_arrays_matches_unpack_whatever_the_fix_order():
    packs, _ = _packs()
    shapes = [p.q.shape for p in packs]
    joined = _packing.join(packs)
    fresh = _packing.split(joined, shapes)
    for pack, weight in zip(packs, fresh):
        assert np.array_equal(weight, _packing.unpack(pack))
    outs = [np.full(int(np.prod(s)), np.nan, np.float32) for s in shapes]
    into = _packing.split(joined, shapes, outs)
    for out, weight, expected in zip(outs, into, fresh):
        assert np.shares_memory(out, weight) and np.array_equal(weight, expected)
    # kept values in another order (an edited file): the same weights, the last of a
    # repeated index winning as in one scatter
    index = np.array([40, 3, 300, 3], np.int32)
    value = np.array([1.5, 2.5, -3.5, 4.5], np.float32)
    edited = dict(joined, fix_index=index, fix_value=value)
    reference = np.concatenate([w.ravel() for w in _packing.split(
        dict(joined, fix_index=np.zeros(0, np.int32), fix_value=np.zeros(0, np.float32)),
        shapes)])
    reference[index] = value
    got = np.concatenate([w.ravel() for w in _packing.split(edited, shapes)])
    assert np.array_equal(got, reference) and got[3] == 4.5
    with pytest.raises(ValueError, match="fix_index does not fit"):
        _packing.split(dict(joined, fix_index=np.array([10 ** 6], np.int32),
                            fix_value=np.ones(1, np.float32)), shapes)


def test_stored_anchor_positions_give_the_weights_a_search_gives():
    rs = np.random.RandomState(2)
    # rows of 9 values (searched at load), 512 (positions stored as uint16 byte pairs,
    # cast and multiplied in several blocks) and 70,000 (stored as int32)
    shapes = [(40, 1, 3, 3), (300, 512), (3, 70000)]
    packs = []
    for shape in shapes:
        params = {"w": (rs.randn(*shape) * 0.2).astype(np.float32)}
        params["w"][1] = 0.0                                  # a dead channel
        flat = params["w"].reshape(shape[0], -1)
        flat[0, 5] = -np.abs(flat[0]).max() * 2               # -128 ...
        flat[0, 7] = np.abs(flat[0]).max() * 0.999            # ... beside a near-tie 127
        packs.append(_packing.pack(_packing.PackSpec("w", True), params))
    for count, dtype, size in [(2, np.uint8, 2 * 300), (3, np.int32, 303)]:
        joined = _packing.join(packs[:count])
        assert joined["anchor_at"].dtype == dtype and joined["anchor_at"].size == size
        stored = _packing.split(joined, shapes[:count])
        searched = _packing.split({k: v for k, v in joined.items() if k != "anchor_at"},
                                  shapes[:count])
        for pack, a, b in zip(packs, stored, searched):
            assert np.array_equal(a, b) and np.array_equal(a, _packing.unpack(pack))
    assert _packing.join(packs[:1])["anchor_at"].size == 0
    with pytest.raises(ValueError, match="anchor_at does not fit"):
        _packing.split(dict(joined, anchor_at=np.full(303, 70000, np.int32)), shapes)


def test_split_on_two_threads_gives_the_same_weights(monkeypatch):
    rs = np.random.RandomState(1)
    shapes = [(16, 8, 3, 3), (24, 16, 1, 1), (10, 24)]
    packs = []
    for shape in shapes:
        params = {"w": (rs.randn(*shape) * 0.2).astype(np.float32)}
        params["w"][1] = 0.0
        params["w"][3, 0] = params["w"].max() * 1.5          # a channel's lone maximum
        packs.append(_packing.pack(_packing.PackSpec("w", True), params))
    joined = _packing.join(packs)
    one = _packing.split(joined, shapes, threads=1)
    monkeypatch.setattr(_packing, "_THREADED_VALUES", 1)    # these weights are small
    two = _packing.split(joined, shapes, threads=2)
    for pack, a, b in zip(packs, one, two):
        assert np.array_equal(a, b) and np.array_equal(a, _packing.unpack(pack))
    # an error on the helper thread (the first half of the values) reaches the caller
    outs = [np.empty(5, np.float32)] + [np.empty(shape, np.float32) for shape in shapes[1:]]
    with pytest.raises(ValueError, match="reshape"):
        _packing.split(joined, shapes, outs, threads=2)


def test_a_channels_anchor_goes_to_its_first_most_extreme_int8_value():
    # the rule the exporter's emulation used: the first -128, else the first value of
    # largest magnitude, the positive one on a tie
    q = np.array([[3, -5, 5, -5, 1], [127, -128, 2, -128, 0], [-7, 7, -7, 7, 0],
                  [0, 0, 0, 0, 0], [-2, -9, 9, 9, -9]], np.int8)
    shapes = [q.shape]
    anchors = np.arange(1, 6, dtype=np.float32)
    joined = {"int8": q.ravel(), "anchors": anchors,
              "factor_index": np.zeros(0, np.int32), "factor_value": np.zeros(0, np.float32),
              "fix_index": np.zeros(0, np.int32), "fix_value": np.zeros(0, np.float32)}
    (weight,) = _packing.split(joined, shapes)
    expected = q * (anchors / np.float32(127.5))[:, None]
    for row, (column, sign) in enumerate([(2, 1), (1, -1), (1, 1), (0, 1), (2, 1)]):
        expected[row, column] = sign * anchors[row]
    assert np.array_equal(weight, expected.astype(np.float32))


def test_host_arrays_are_mxnet_arrays_over_the_views_memory():
    pairs = _mxnet.host_arrays([((3, 4), np.float32), ((0, 2), np.float32), ((5,), np.int32)])
    assert [a.shape for a, _ in pairs] == [(3, 4), (0, 2), (5,)]
    assert [a.dtype for a, _ in pairs] == [np.float32, np.float32, np.int32]
    pairs[0][1][...] = np.arange(12, dtype=np.float32).reshape(3, 4)
    pairs[2][1][...] = [5, 4, 3, 2, 1]
    assert np.array_equal(pairs[0][0].asnumpy(), np.arange(12).reshape(3, 4))
    assert (pairs[0][0] * 2).asnumpy()[2, 3] == 22
    assert pairs[2][0].asnumpy().tolist() == [5, 4, 3, 2, 1]
    assert pairs[1][1].shape == (0, 2)


def test_background_returns_the_value_or_raises_the_error():
    from gluon_quant._background import Background
    assert Background(sum, [1, 2, 3]).result() == 6
    failing = Background(int, "not a number")
    with pytest.raises(ValueError, match="not a number"):
        failing.result()


def test_graph_entries_are_checked_in_nodes_and_heads():
    x = mx.sym.var("data")
    sym = mx.sym.Activation(mx.sym.FullyConnected(x, num_hidden=4, name="fc"),
                            act_type="relu", name="act")
    good = _mxnet.graph_json(sym)
    _mxnet.check_graph_entries(good)
    _mxnet.check_graph_entries(good, sym)
    names = [n["name"] for n in good["nodes"]]

    def broken(change):
        graph = json.loads(json.dumps(good))
        change(graph)
        return graph
    act = names.index("act")
    cases = [
        (lambda g: g["nodes"][act].update(inputs=[[act - 1, 1, 0]]),
         r"input of 'act' \[\d+, 1, 0\] refers to a node output that does not exist"),
        (lambda g: g["nodes"][act].update(inputs=[[act, 0, 0]]), "does not exist"),
        (lambda g: g["nodes"][act].update(inputs=[[True, 0, 0]]),
         r"input of 'act' is \[True, 0, 0\], not \[node, output, version\]"),
        (lambda g: g["nodes"][act].update(inputs=[[1]]), r"is \[1\], not"),
        (lambda g: g.update(heads=[[act, 2, 0]]), r"graph output \[\d+, 2, 0\] refers"),
        (lambda g: g.update(heads=["x"]), r"graph output is 'x', not"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            _mxnet.check_graph_entries(broken(change))
