"""CalibrationTable: immutability, merging, versioned atomic JSON files."""
import json
import os

import pytest

from gluon_quant.calib import CalibrationTable
from gluon_quant.calib import table as table_module
from gluon_quant.errors import ArtifactError, CalibrationTableError


def make(**kwargs):
    ranges = {"data": (-2.5, 2.5), "conv0_relu": (0.0, 6.0), "tiny": (0.0, 1e-9),
              "odd": (-0.1 - 0.2, 1.0 / 3.0)}
    return CalibrationTable(ranges, **{"method": "entropy", **kwargs})


def test_is_an_immutable_mapping():
    table = make(meta={"images": 256})
    assert table["data"] == (-2.5, 2.5) and len(table) == 4
    assert list(table) == ["data", "conv0_relu", "tiny", "odd"]
    with pytest.raises(TypeError):
        table["data"] = (0.0, 1.0)
    with pytest.raises(AttributeError):
        table.method = "mse"
    table.meta["images"] = 1
    assert table.meta == {"images": 256}


def test_equality():
    assert make() == make()
    assert make() != make(fingerprint="abc")
    assert make() != make(method="mse")
    assert make() != make(meta={"a": 1})
    assert make() != CalibrationTable({"data": (-2.5, 2.5)}, method="entropy")


@pytest.mark.parametrize("ranges", [
    {"x": (1.0, 1.0)}, {"x": (2.0, 1.0)}, {"x": (0.0, float("nan"))}, {"x": (0.0, float("inf"))},
    {"x": (0.0,)}, {"x": ("0", "1")}, {"": (0.0, 1.0)}, {3: (0.0, 1.0)}, {"x": (False, True)},
])
def test_bad_ranges_are_refused(ranges):
    with pytest.raises(CalibrationTableError):
        CalibrationTable(ranges)


def test_bad_meta_is_refused():
    with pytest.raises(CalibrationTableError, match="JSON"):
        CalibrationTable({"x": (0.0, 1.0)}, meta={"f": object()})


def test_save_load_round_trip_keeps_full_precision(tmp_path):
    table = make(fingerprint="f00d", meta={"images": 256, "note": "é"})
    path = tmp_path / "calib.json"
    table.save(path)
    loaded = CalibrationTable.load(path)
    assert loaded == table
    assert loaded["tiny"] == (0.0, 1e-9)
    assert loaded["odd"] == (-0.1 - 0.2, 1.0 / 3.0)  # bit-identical, not 6 decimals
    assert json.loads(path.read_text())["version"] == "1.0"
    assert [p.name for p in tmp_path.iterdir()] == ["calib.json"]
    assert CalibrationTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table


def test_newer_major_version_is_refused_and_newer_minor_accepted(tmp_path):
    state = make().to_dict()
    path = tmp_path / "new.json"
    path.write_text(json.dumps(dict(state, version="2.0")))
    with pytest.raises(CalibrationTableError, match="upgrade gluon_quant"):
        CalibrationTable.load(path)
    path.write_text(json.dumps(dict(state, version="1.7")))
    assert CalibrationTable.load(path) == make()


def test_truncated_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "calib.json"
    make().save(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CalibrationTableError, match="calib.json.*truncated"):
        CalibrationTable.load(path)
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(CalibrationTableError, match="calib.json"):
        CalibrationTable.load(path)


@pytest.mark.parametrize("change, problem", [
    ({"format": "something"}, "Not a gluon_quant calibration table"),
    ({"version": 1}, "version"),
    ({"ranges": [["x", 0, 1]]}, "'ranges' must be an object"),
    ({"ranges": {"x": [1, 0]}}, "lo < hi"),
    ({"method": None}, "method"),
])
def test_malformed_files_are_refused_naming_the_problem(tmp_path, change, problem):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(dict(make().to_dict(), **change)))
    with pytest.raises(CalibrationTableError, match="bad.json") as info:
        CalibrationTable.load(path)
    assert problem in str(info.value)


def test_missing_keys_are_refused(tmp_path):
    state = make().to_dict()
    del state["fingerprint"]
    with pytest.raises(CalibrationTableError, match="Missing keys: fingerprint"):
        CalibrationTable.from_dict(state)


def test_missing_file_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError, match="nothing.json"):
        CalibrationTable.load(tmp_path / "nothing.json")


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "calib.json"
    make(method="mse").save(path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(table_module.os, "replace", broken_replace)
    with pytest.raises(ArtifactError, match="calib.json"):
        make().save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.json"]
    assert path.read_bytes() == before


def test_write_into_a_missing_directory_is_an_artifact_error(tmp_path):
    with pytest.raises(ArtifactError):
        make().save(tmp_path / "no" / "such" / "dir" / "calib.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs a non-root POSIX user for permissions to apply")
def test_write_into_a_read_only_directory(tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with pytest.raises(ArtifactError):
            make().save(directory / "calib.json")
        assert list(directory.iterdir()) == []
    finally:
        directory.chmod(0o700)


def test_merge_takes_the_widest_range():
    a = CalibrationTable({"x": (-1.0, 1.0), "y": (0.0, 2.0)}, method="entropy",
                         fingerprint="g1")
    b = CalibrationTable({"x": (-3.0, 0.5), "z": (0.0, 1.0)}, method="entropy")
    merged = a.merge(b)
    assert dict(merged) == {"x": (-3.0, 1.0), "y": (0.0, 2.0), "z": (0.0, 1.0)}
    assert merged.fingerprint == "g1" and merged.method == "entropy"
    assert a.merge(b.with_fingerprint("g1")).fingerprint == "g1"
    assert a.merge(CalibrationTable({"x": (0.0, 1.0)}, method="mse")).method == "mixed"


def test_merge_refuses_tables_of_different_graphs():
    a = CalibrationTable({"x": (0.0, 1.0)}, fingerprint="g1")
    with pytest.raises(CalibrationTableError, match="different graphs"):
        a.merge(a.with_fingerprint("g2"))
    assert a.with_fingerprint(None).merge(a.with_fingerprint("g2")).fingerprint == "g2"
