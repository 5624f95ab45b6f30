"""Direct unit tests of the prediction store (:mod:`tipsomaly.runners.store`), numpy only.

They pin the behaviour its module doc promises (content keys, layout, unique part names,
atomic writes, damaged files dropped with a warning, ``allow_pickle=False``, consolidation)
without running an evaluation, so mutation testing can run them per mutant (issue 9).
The slow end-to-end checks stay in ``test_store.py``.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tipsomaly import fingerprint
from tipsomaly.errors import OutputError
from tipsomaly.runners import store as store_mod
from tipsomaly.runners.store import (
    FIELDS,
    FORMAT,
    STORE_NAME,
    ClassPredictions,
    PredictionStore,
    StoredClass,
    _atomic_savez,
    _read_rows,
    _safe_name,
    config_key,
    sample_keys,
)

N_PATCHES = 4
SIZE = 5  # 25 mask bits: not a whole number of bytes
PART = re.compile(r"part-[0-9a-f]{32}\.npz")


def _arrays(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` rows of every stored field, distinct per row and per seed."""
    rng = np.random.default_rng(seed)
    masks = rng.random((n, SIZE * SIZE)) > 0.5
    return {
        "label": (np.arange(n) % 2).astype(np.int64),
        "has_mask": (np.arange(n) % 2).astype(bool),
        "original_hw": np.tile([[30 + seed, 40]], (n, 1)).astype(np.int64),
        "global_probs_cls1": rng.random((n, 2)),
        "global_probs_cls2": rng.random((n, 2)),
        "patch_probs": rng.random((n, N_PATCHES, 2)),
        "masks_packed": np.packbits(masks, axis=1),
    }


def _keys(names: list[str]) -> list[tuple[str, str]]:
    return [(f"k-{n}", f"p-{n}") for n in names]


def _payload(n: int = 2, **changes) -> dict[str, np.ndarray]:
    """A valid part file's contents (what ``add`` writes) with ``changes`` applied."""
    arrays = {k: np.asarray(v, FIELDS[k]) for k, v in _arrays(n).items()}
    arrays["key"] = np.array([f"k{i}" for i in range(n)], dtype=np.str_)
    arrays["pred_key"] = np.array([f"p{i}" for i in range(n)], dtype=np.str_)
    arrays.update(changes)
    return arrays


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- keys -------------------------------------------------------------------------------------
@pytest.fixture
def sample(tmp_path) -> dict[str, Path]:
    files = {
        "image": b"image bytes",
        "same_image": b"image bytes",
        "other_image": b"other image bytes",
        "mask": b"mask bytes",
        "same_mask": b"mask bytes",
        "other_mask": b"other mask bytes",
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(data)
    return paths


def test_sample_keys_are_the_documented_digests(sample):
    key, pred_key = sample_keys("bottle", sample["image"], 1, sample["mask"])
    image = fingerprint.file_digest(sample["image"])
    mask = fingerprint.file_digest(sample["mask"])
    assert pred_key == fingerprint.digest([FORMAT, "bottle", image], 32)
    assert key == fingerprint.digest([FORMAT, "bottle", image, 1, mask], 32)
    assert re.fullmatch("[0-9a-f]{32}", key) and re.fullmatch("[0-9a-f]{32}", pred_key)


def test_keys_are_stable_across_versions(sample):
    """A store written by this version is found by the next: the format tag and the digests
    are part of the on-disk contract (changing them must be deliberate)."""
    assert FORMAT == "tipsomaly-predictions-2"
    assert sample_keys("bottle", sample["image"], 1, sample["mask"]) == (
        fingerprint.digest(["tipsomaly-predictions-2", "bottle", _sha(b"image bytes"), 1,
                            _sha(b"mask bytes")], 32),
        fingerprint.digest(["tipsomaly-predictions-2", "bottle", _sha(b"image bytes")], 32),
    )  # fmt: skip
    assert config_key({"a": 1}) == fingerprint.digest(["tipsomaly-predictions-2", {"a": 1}], 16)


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_keys_depend_on_content_not_on_paths(sample):
    a = sample_keys("bottle", sample["image"], 1, sample["mask"])
    b = sample_keys("bottle", sample["same_image"], 1, sample["same_mask"])
    assert a == b


def test_pred_key_is_class_and_image_only(sample):
    key, pred = sample_keys("bottle", sample["image"], 1, sample["mask"])
    key2, pred2 = sample_keys("bottle", sample["image"], 1, sample["other_mask"])
    key3, pred3 = sample_keys("bottle", sample["image"], 0, None)
    assert pred == pred2 == pred3
    assert len({key, key2, key3}) == 3
    assert sample_keys("cable", sample["image"], 1, sample["mask"])[1] != pred
    assert sample_keys("bottle", sample["other_image"], 1, sample["mask"])[1] != pred
    assert key != pred


def test_the_mask_of_a_normal_sample_is_not_read(sample, tmp_path):
    normal = sample_keys("bottle", sample["image"], 0, None)
    assert sample_keys("bottle", sample["image"], 0, sample["mask"]) == normal
    assert sample_keys("bottle", sample["image"], 0, tmp_path / "missing.png") == normal
    # numpy labels work as well as ints
    assert sample_keys("bottle", sample["image"], np.int64(0), sample["mask"]) == normal
    anomalous = sample_keys("bottle", sample["image"], np.int64(1), sample["mask"])
    assert anomalous == sample_keys("bottle", sample["image"], 1, sample["mask"])
    assert anomalous[0] != sample_keys("bottle", sample["image"], 1, None)[0]


def test_an_unreadable_image_or_mask_raises_oserror(sample, tmp_path):
    with pytest.raises(OSError):
        sample_keys("bottle", tmp_path / "missing.png", 0, None)
    with pytest.raises(OSError):
        sample_keys("bottle", sample["image"], 1, tmp_path / "missing.png")


def test_config_key_is_short_stable_and_order_free():
    a = config_key({"size": 518, "sigma": 4.0, "model": "m"})
    assert a == config_key({"model": "m", "sigma": 4.0, "size": 518})
    assert re.fullmatch("[0-9a-f]{16}", a)
    assert a != config_key({"size": 518, "sigma": 4.0000001, "model": "m"})


# -- files ------------------------------------------------------------------------------------
def test_atomic_savez_writes_a_whole_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    seen = {}
    fsync = os.fsync

    def spy(fd):  # the moment the bytes are flushed: only the temporary exists
        seen["files"] = _files(tmp_path)
        return fsync(fd)

    monkeypatch.setattr(store_mod.os, "fsync", spy)
    _atomic_savez(tmp_path / "x.npz", a=np.arange(3))
    (tmp,) = seen["files"]
    assert tmp.startswith(".x.npz.") and tmp.endswith(".tmp")  # what open_class cleans
    assert _files(tmp_path) == ["x.npz"]
    with np.load(tmp_path / "x.npz") as data:
        assert data["a"].tolist() == [0, 1, 2]


def test_atomic_savez_failure_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    _atomic_savez(tmp_path / "x.npz", a=np.arange(3))

    def failing(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod.os, "replace", failing)
    with pytest.raises(OutputError, match="cannot write .*x.npz: No space left on device"):
        _atomic_savez(tmp_path / "x.npz", a=np.arange(5))
    assert _files(tmp_path) == ["x.npz"]
    with np.load(tmp_path / "x.npz") as data:
        assert data["a"].tolist() == [0, 1, 2]


def test_atomic_savez_into_a_missing_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot write .*x.npz: No such file or directory$"):
        _atomic_savez(tmp_path / "missing" / "x.npz", a=np.arange(3))


@pytest.mark.parametrize(
    ("name", "expected"),
    [("bottle", "bottle"), ("metal_nut", "metal_nut"), ("a-b.c_1", "a-b.c_1")],
)
def test_safe_names_are_kept(name, expected):
    assert _safe_name(name) == expected


def test_other_names_are_cleaned_and_told_apart():
    assert re.fullmatch(r"a_b-[0-9a-f]{8}", _safe_name("a b"))
    assert re.fullmatch(r"hidden-[0-9a-f]{8}", _safe_name(".hidden"))
    assert re.fullmatch(r"_-[0-9a-f]{8}", _safe_name("/"))
    names = ["a b", "a?b", "a/b", "a\udcffb", ".a", "a"]
    cleaned = [_safe_name(n) for n in names]
    assert len(set(cleaned)) == len(names)
    assert _safe_name("a b") == "a_b-" + _sha1("a b")
    assert _safe_name("X y") == "X_y-" + _sha1("X y")  # only dots are stripped
    for c in cleaned:
        assert not c.startswith(".") and "/" not in c


def _sha1(name: str) -> str:
    import hashlib

    return hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def test_read_rows_returns_every_field_with_its_dtype(tmp_path):
    np.savez(tmp_path / "p.npz", **{k: v.astype(np.float64) if v.dtype.kind == "f" else v
                                    for k, v in _payload(3).items()})  # fmt: skip
    rows = _read_rows(tmp_path / "p.npz")
    assert set(rows) == {"key", "pred_key", *FIELDS}
    for name, dtype in FIELDS.items():
        assert rows[name].dtype == dtype, name
        assert rows[name].shape[0] == 3
    assert rows["key"].tolist() == ["k0", "k1", "k2"]
    assert rows["pred_key"].tolist() == ["p0", "p1", "p2"]


@pytest.mark.parametrize("field", ["key", "pred_key", *FIELDS])
def test_read_rows_refuses_a_missing_field(tmp_path, field):
    payload = _payload()
    del payload[field]
    np.savez(tmp_path / "p.npz", **payload)
    with pytest.raises(KeyError):
        _read_rows(tmp_path / "p.npz")


@pytest.mark.parametrize("field", ["pred_key", *FIELDS])
def test_read_rows_refuses_a_field_with_other_rows_than_the_keys(tmp_path, field):
    payload = _payload(3)
    payload[field] = payload[field][:2]
    np.savez(tmp_path / "p.npz", **payload)
    with pytest.raises(ValueError, match=rf"^{field} has \(2,\) rows, keys 3$"):
        _read_rows(tmp_path / "p.npz")


@pytest.mark.parametrize("field", ["key", "pred_key"])
def test_read_rows_refuses_keys_that_are_not_text(tmp_path, field):
    np.savez(tmp_path / "p.npz", **_payload(2, **{field: np.array([1, 2])}))
    with pytest.raises(ValueError, match=f"{field} is not text"):
        _read_rows(tmp_path / "p.npz")


@pytest.mark.parametrize("field", ["global_probs_cls1", "global_probs_cls2", "patch_probs"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_read_rows_refuses_non_finite_probabilities(tmp_path, field, bad):
    payload = _payload(2)
    payload[field] = payload[field].copy()
    payload[field].flat[-1] = bad
    np.savez(tmp_path / "p.npz", **payload)
    with pytest.raises(ValueError, match=f"{field} holds non-finite"):
        _read_rows(tmp_path / "p.npz")


def test_read_rows_never_unpickles(tmp_path):
    payload = _payload(2, key=np.array(["k0", "k1"], dtype=object))
    np.savez(tmp_path / "p.npz", **payload)
    with pytest.raises(ValueError, match="allow_pickle"):
        _read_rows(tmp_path / "p.npz")


def test_stored_class_indexes_rows_by_key_and_by_pred_key(tmp_path):
    stored = StoredClass()
    assert len(stored) == 0
    payload = _payload(2)
    stored.add_rows(payload)
    assert len(stored) == 2
    assert set(stored.rows) == {"k0", "k1"} and set(stored.by_pred) == {"p0", "p1"}
    assert stored.by_pred["p1"] is stored.rows["k1"]
    row = stored.rows["k1"]
    assert set(row) == {*FIELDS, "pred_key"} and row["pred_key"] == "p1"
    for name in FIELDS:
        np.testing.assert_array_equal(row[name], payload[name][1])
    assert all(type(k) is str for k in (*stored.rows, *stored.by_pred))


# -- the store --------------------------------------------------------------------------------
def test_add_writes_one_uniquely_named_part_per_call(tmp_path):
    store = PredictionStore(tmp_path / "preds")
    store.add("bottle", _keys(["a", "b"]), _arrays(2))
    store.add("bottle", _keys(["a", "b"]), _arrays(2))  # a second writer of the same rows
    parts = _files(tmp_path / "preds" / "bottle")
    assert len(parts) == 2 and all(PART.fullmatch(p) for p in parts)
    rows = _read_rows(tmp_path / "preds" / "bottle" / parts[0])
    assert rows["key"].tolist() == ["k-a", "k-b"]
    assert rows["pred_key"].tolist() == ["p-a", "p-b"]
    stored = store.open_class("bottle")
    assert len(stored) == 2  # duplicates collapse


def test_parts_hold_the_documented_dtypes(tmp_path):
    """On disk, not only once read back: float32 probabilities, int8 labels, text keys."""
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a", "b"]), _arrays(2))  # float64 / int64 given
    (part,) = (tmp_path / "bottle").glob("part-*.npz")
    with np.load(part) as raw:
        assert {k: raw[k].dtype for k in FIELDS} == {k: np.dtype(v) for k, v in FIELDS.items()}
        assert raw["key"].dtype.kind == raw["pred_key"].dtype.kind == "U"


def test_add_round_trips_every_field(tmp_path):
    store = PredictionStore(tmp_path)
    arrays = _arrays(3, seed=1)
    store.add("bottle", _keys(["a", "b", "c"]), arrays)
    stored = store.open_class("bottle")
    for i, name in enumerate("abc"):
        row = stored.rows[f"k-{name}"]
        assert row["pred_key"] == f"p-{name}"
        for field, dtype in FIELDS.items():
            np.testing.assert_allclose(row[field], np.asarray(arrays[field][i], dtype))
            assert row[field].dtype == dtype


def test_add_without_rows_writes_nothing(tmp_path):
    store = PredictionStore(tmp_path / "preds")
    store.add("bottle", [], _arrays(0))
    assert not (tmp_path / "preds").exists()


def test_add_refuses_missing_fields_and_wrong_row_counts(tmp_path):
    store = PredictionStore(tmp_path)
    arrays = _arrays(2)
    del arrays["has_mask"], arrays["label"]
    with pytest.raises(ValueError, match=r"missing prediction fields: \['has_mask', 'label'\]"):
        store.add("bottle", _keys(["a", "b"]), arrays)
    with pytest.raises(ValueError, match="missing prediction fields"):
        store.add("bottle", [], arrays)  # checked before anything else
    for field in FIELDS:
        arrays = _arrays(2)
        arrays[field] = arrays[field][:1]
        with pytest.raises(ValueError, match=f"{field} has \\(1,\\) rows for 2 keys"):
            store.add("bottle", _keys(["a", "b"]), arrays)
    assert not list(tmp_path.rglob("*.npz")) and not list(tmp_path.rglob(".*"))


def test_add_to_an_unwritable_store_is_an_output_error(tmp_path):
    (tmp_path / "preds").write_text("a file, not a folder")
    store = PredictionStore(tmp_path / "preds")
    with pytest.raises(OutputError, match="cannot write .*preds.bottle: Not a directory$"):
        store.add("bottle", _keys(["a"]), _arrays(1))


def test_classes_live_in_folders_under_safe_names(tmp_path):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a"]), _arrays(1))
    store.add("a b", _keys(["b"]), _arrays(1))
    store.add(".x", _keys(["c"]), _arrays(1))
    assert _files(tmp_path) == sorted(["bottle", _safe_name("a b"), _safe_name(".x")])
    assert set(store.open_class("a b").rows) == {"k-b"}
    assert set(store.open_class(".x").rows) == {"k-c"}
    assert len(store.open_class("a_b")) == 0


def test_open_class_of_an_unknown_class_is_empty(tmp_path):
    store = PredictionStore(tmp_path / "nothing")
    stored = store.open_class("bottle")
    assert len(stored) == 0 and stored.by_pred == {}
    assert not (tmp_path / "nothing").exists()


def test_open_class_reads_the_store_and_then_the_parts(tmp_path):
    """A row computed again (in a part) replaces its consolidated copy."""
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a", "b"]), _arrays(2, seed=1))
    store.finish_class("bottle", ["k-a", "k-b"])
    store.add("bottle", _keys(["b", "c"]), _arrays(2, seed=2))
    store.add("bottle", _keys(["d"]), _arrays(1, seed=3))
    stored = store.open_class("bottle")
    assert set(stored.rows) == {"k-a", "k-b", "k-c", "k-d"}
    assert stored.rows["k-a"]["original_hw"].tolist() == [31, 40]
    assert stored.rows["k-b"]["original_hw"].tolist() == [32, 40]
    assert stored.rows["k-d"]["original_hw"].tolist() == [33, 40]


def test_a_damaged_file_is_dropped_with_a_warning(tmp_path, caplog):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a"]), _arrays(1))
    store.add("bottle", _keys(["b"]), _arrays(1))
    directory = tmp_path / "bottle"
    bad = sorted(directory.glob("part-*.npz"))[0]
    keep = sorted(directory.glob("part-*.npz"))[1]
    bad.write_bytes(bad.read_bytes()[:50])  # truncated
    kept_rows = set(_read_rows(keep)["key"].tolist())
    with caplog.at_level(logging.WARNING, logger="tipsomaly.runners.store"):
        stored = store.open_class("bottle")
    assert set(stored.rows) == kept_rows
    assert _files(directory) == [keep.name]
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"class bottle: dropping unreadable stored predictions {bad} "
        f"(BadZipFile: File is not a zip file); they are computed again"
    )


def test_a_damaged_store_file_is_dropped_and_parts_still_read(tmp_path, caplog):
    store = PredictionStore(tmp_path)
    (tmp_path / "bottle").mkdir()
    (tmp_path / "bottle" / STORE_NAME).write_bytes(b"not a zip")
    store.add("bottle", _keys(["a"]), _arrays(1))
    with caplog.at_level(logging.WARNING, logger="tipsomaly.runners.store"):
        stored = store.open_class("bottle")
    assert set(stored.rows) == {"k-a"}
    assert not (tmp_path / "bottle" / STORE_NAME).exists()
    assert f"{tmp_path / 'bottle' / STORE_NAME} (ValueError: " in caplog.text  # never unpickled


def test_clean_open_removes_leftover_temporaries_only(tmp_path):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a"]), _arrays(1))
    directory = tmp_path / "bottle"
    (directory / ".part-x.npz.abc.tmp").write_bytes(b"half")
    (directory / "notes.tmp").write_bytes(b"not ours")
    (directory / ".hidden").write_bytes(b"not ours")
    assert len(store.open_class("bottle")) == 1
    assert sorted(p.name for p in directory.glob(".*.tmp")) == []
    assert (directory / "notes.tmp").exists() and (directory / ".hidden").exists()


def test_reading_without_cleaning_leaves_every_file_alone(tmp_path, caplog):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a"]), _arrays(1))
    directory = tmp_path / "bottle"
    (directory / ".part-x.npz.abc.tmp").write_bytes(b"another writer's")
    (directory / "part-0.npz").write_bytes(b"damaged")
    store.add("bottle", _keys(["b"]), _arrays(1))
    before = _files(directory)
    with caplog.at_level(logging.DEBUG, logger="tipsomaly.runners.store"):
        stored = store.open_class("bottle", clean=False)
    assert set(stored.rows) == {"k-a", "k-b"}  # the damaged file does not stop the others
    assert _files(directory) == before
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    with pytest.raises(Exception) as why:
        _read_rows(directory / "part-0.npz")
    expected = f"class bottle: skipping {directory / 'part-0.npz'} ({why.value})"
    assert caplog.records[0].getMessage() == expected


def test_open_class_cleans_by_default(tmp_path):
    store = PredictionStore(tmp_path)
    (tmp_path / "bottle").mkdir()
    (tmp_path / "bottle" / "part-0.npz").write_bytes(b"damaged")
    (tmp_path / "bottle" / ".part-1.npz.x.tmp").write_bytes(b"half")
    store.open_class("bottle")
    assert _files(tmp_path / "bottle") == []


def _vanishing(monkeypatch, pattern: str, call: int) -> None:
    """The ``call``-th listing of ``pattern`` returns files that another process then removes
    (a writer renaming its temporary into place, a concurrent cleaner)."""
    glob = Path.glob
    calls = []

    def listing(self, pat, *args, **kwargs):
        found = list(glob(self, pat, *args, **kwargs))
        if pat == pattern:
            calls.append(pat)
            if len(calls) == call:
                for path in found:
                    path.unlink()
        return iter(found)

    monkeypatch.setattr(Path, "glob", listing)


def test_a_leftover_temporary_that_vanishes_while_cleaning_is_no_error(tmp_path, monkeypatch):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a"]), _arrays(1))
    (tmp_path / "bottle" / ".part-x.npz.abc.tmp").write_bytes(b"half")
    _vanishing(monkeypatch, ".*.tmp", call=1)
    assert set(store.open_class("bottle").rows) == {"k-a"}


def test_a_part_that_vanishes_while_being_read_is_no_error(tmp_path, monkeypatch, caplog):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a"]), _arrays(1))
    _vanishing(monkeypatch, "part-*.npz", call=1)  # consolidated by another process meanwhile
    with caplog.at_level(logging.WARNING, logger="tipsomaly.runners.store"):
        assert len(store.open_class("bottle")) == 0
    assert "FileNotFoundError" in caplog.text


def test_a_part_that_vanishes_while_consolidating_is_no_error(tmp_path, monkeypatch):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a"]), _arrays(1))
    _vanishing(monkeypatch, "part-*.npz", call=2)  # 1: open_class reads it, 2: finish_class
    store.finish_class("bottle", ["k-a"])
    assert _read_rows(tmp_path / "bottle" / STORE_NAME)["key"].tolist() == ["k-a"]


def test_finish_class_consolidates_current_rows_in_sample_order(tmp_path):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a", "b"]), _arrays(2, seed=1))
    store.add("bottle", _keys(["c", "old"]), _arrays(2, seed=2))
    store.finish_class("bottle", ["k-c", "k-a", "k-missing", "k-c", "k-b"])
    assert _files(tmp_path / "bottle") == [STORE_NAME]
    rows = _read_rows(tmp_path / "bottle" / STORE_NAME)
    assert rows["key"].tolist() == ["k-c", "k-a", "k-b"]
    assert rows["pred_key"].tolist() == ["p-c", "p-a", "p-b"]
    assert rows["original_hw"][:, 0].tolist() == [32, 31, 31]
    before = store.open_class("bottle")
    again = PredictionStore(tmp_path).open_class("bottle")
    for key in ("k-a", "k-b", "k-c"):
        for field in FIELDS:
            np.testing.assert_array_equal(again.rows[key][field], before.rows[key][field])


def test_finish_class_rewrites_nothing_when_nothing_changed(tmp_path, monkeypatch):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a", "b"]), _arrays(2))
    store.finish_class("bottle", ["k-a", "k-b"])
    writes = []
    monkeypatch.setattr(store_mod, "_atomic_savez", lambda path, **a: writes.append(path))
    store.finish_class("bottle", ["k-b", "k-a"])
    assert writes == []
    store.finish_class("unknown", ["k-a"])  # no folder, no rows: nothing to write
    assert writes == [] and not (tmp_path / "unknown").exists()
    store.finish_class("bottle", ["k-a"])  # a stale row: the store is rewritten
    assert writes == [tmp_path / "bottle" / STORE_NAME]


def test_finish_class_drops_stale_rows_without_new_parts(tmp_path):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a", "b"]), _arrays(2))
    store.finish_class("bottle", ["k-a", "k-b"])
    store.finish_class("bottle", ["k-b"])
    assert _read_rows(tmp_path / "bottle" / STORE_NAME)["key"].tolist() == ["k-b"]


def test_finish_class_with_no_current_rows_writes_an_empty_readable_store(tmp_path):
    store = PredictionStore(tmp_path)
    store.add("bottle", _keys(["a"]), _arrays(1))
    store.finish_class("bottle", [])
    assert _files(tmp_path / "bottle") == [STORE_NAME]
    with np.load(tmp_path / "bottle" / STORE_NAME) as raw:  # the file itself, not converted
        assert {k: raw[k].dtype for k in FIELDS} == {k: np.dtype(v) for k, v in FIELDS.items()}
    rows = _read_rows(tmp_path / "bottle" / STORE_NAME)
    assert rows["key"].shape == (0,) and rows["key"].dtype.kind == "U"
    for field, dtype in FIELDS.items():
        assert rows[field].shape == (0,) and rows[field].dtype == dtype
    assert len(store.open_class("bottle")) == 0


def test_class_predictions_unpack_masks_at_model_resolution():
    rng = np.random.default_rng(0)
    masks = rng.random((3, SIZE, SIZE)) > 0.5
    packed = np.packbits(masks.reshape(3, -1), axis=1)
    preds = ClassPredictions(
        arrays={"index": np.array([0, 2, 5]), "masks_packed": packed}, errors={}, paths=[]
    )
    assert len(preds) == 3
    got = preds.masks(SIZE)
    assert got.dtype == bool and got.shape == (3, SIZE, SIZE)
    np.testing.assert_array_equal(got, masks)
