"""tipsomaly.data.meta: reading, validating and writing meta.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tipsomaly.data.meta import DatasetMeta, MetaError, Sample, read_meta, write_meta


def _entry(img, mask="", cls="bottle", specie="good", anomaly=0):
    return {
        "img_path": img,
        "mask_path": mask,
        "cls_name": cls,
        "specie_name": specie,
        "anomaly": anomaly,
    }


@pytest.fixture
def dataset(tmp_path, save_image, save_mask) -> Path:
    """A small dataset on disk with a valid meta.json (2 classes, one unmasked anomaly)."""
    root = tmp_path / "ds"
    for rel in (
        "bottle/test/good/000.png",
        "bottle/test/broken/000.png",
        "cable/test/good/0.png",
        "cable/test/cut/0.png",
        "bottle/train/good/000.png",
    ):
        save_image(root / rel)
    save_mask(root / "bottle/ground_truth/broken/000_mask.png")
    meta = {
        "train": {"bottle": [_entry("bottle/train/good/000.png")]},
        "test": {
            "bottle": [
                _entry("bottle/test/good/000.png"),
                _entry(
                    "bottle/test/broken/000.png",
                    "bottle/ground_truth/broken/000_mask.png",
                    specie="broken",
                    anomaly=1,
                ),
            ],
            "cable": [
                _entry("cable/test/good/0.png", cls="cable"),
                _entry("cable/test/cut/0.png", cls="cable", specie="cut", anomaly=1),
            ],
        },
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2))
    return root


def _rewrite(root: Path, edit) -> None:
    data = json.loads((root / "meta.json").read_text())
    edit(data)
    (root / "meta.json").write_text(json.dumps(data, indent=2))


def test_read_valid_meta(dataset):
    meta = read_meta(dataset)
    assert isinstance(meta, DatasetMeta)
    assert meta.split == "test" and meta.classes == ["bottle", "cable"] and len(meta) == 4
    assert meta.counts() == {"bottle": (1, 1), "cable": (1, 1)}
    broken = meta.samples["bottle"][1]
    assert broken == Sample(
        dataset / "bottle/test/broken/000.png",
        dataset / "bottle/ground_truth/broken/000_mask.png",
        "bottle",
        "broken",
        1,
    )
    assert broken.has_mask
    cut = meta.samples["cable"][1]
    assert cut.anomaly == 1 and not cut.has_mask and cut.mask_path is None
    assert [s.image_path.name for s in meta] == ["000.png", "000.png", "0.png", "0.png"]


def test_read_accepts_the_json_file_and_other_splits(dataset):
    assert len(read_meta(dataset / "meta.json")) == 4
    train = read_meta(dataset, split="train")
    assert train.classes == ["bottle"] and len(train) == 1


def test_class_selection_keeps_requested_order(dataset):
    meta = read_meta(dataset, classes=["cable", "bottle"])
    assert meta.classes == ["cable", "bottle"]
    assert read_meta(dataset, classes=["cable"]).classes == ["cable"]


def test_unknown_class_lists_available(dataset):
    with pytest.raises(MetaError, match="'pill'.*available: bottle, cable"):
        read_meta(dataset, classes=["pill"])


def test_missing_meta_file(tmp_path):
    # the hint is the command that writes it, for this root (not a Python function)
    with pytest.raises(MetaError, match="not found") as info:
        read_meta(tmp_path)
    assert f"tipsomaly data meta {tmp_path}" in str(info.value)
    assert "build_meta" not in str(info.value)


def test_bad_json_reports_line_and_column(dataset):
    (dataset / "meta.json").write_text('{\n  "test": {\n    "bottle": [,]\n  }\n}\n')
    with pytest.raises(MetaError, match=r"invalid JSON at line 3, column 16"):
        read_meta(dataset)


def test_missing_key_names_the_entry(dataset):
    _rewrite(dataset, lambda d: d["test"]["bottle"][1].pop("mask_path"))
    with pytest.raises(MetaError) as info:
        read_meta(dataset)
    msg = str(info.value)
    assert "test/bottle[1]" in msg and "bottle/test/broken/000.png" in msg and "'mask_path'" in msg


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("img_path", 3, "'img_path' must be a non-empty string"),
        ("img_path", "", "'img_path' must be a non-empty string"),
        ("mask_path", 7, "'mask_path' must be a string"),
        ("anomaly", "1", "'anomaly' must be 0 or 1"),
        ("anomaly", 2, "'anomaly' must be 0 or 1, got 2"),
        ("anomaly", 1.0, "'anomaly' must be 0 or 1"),
        ("cls_name", "cable", "'cls_name' is 'cable' but the entry is listed under 'bottle'"),
        ("specie_name", ["x"], "'specie_name' must be a string"),
    ],
)
def test_wrong_types_name_the_entry(dataset, field, value, match):
    _rewrite(dataset, lambda d: d["test"]["bottle"][0].__setitem__(field, value))
    with pytest.raises(MetaError, match=match) as info:
        read_meta(dataset)
    assert "test/bottle[0]" in str(info.value)


def test_entry_not_an_object(dataset):
    _rewrite(dataset, lambda d: d["test"]["cable"].append("cable/test/good/0.png"))
    with pytest.raises(MetaError, match=r"test/cable\[2\]: entry must be a JSON object"):
        read_meta(dataset)


def test_bad_top_level_and_split(dataset):
    (dataset / "meta.json").write_text("[]")
    with pytest.raises(MetaError, match="top level must be a JSON object"):
        read_meta(dataset)
    (dataset / "meta.json").write_text('{"train": {}}')
    with pytest.raises(MetaError, match=r"no split 'test'; splits present: \['train'\]"):
        read_meta(dataset)
    (dataset / "meta.json").write_text('{"test": []}')
    with pytest.raises(MetaError, match="must map class names to lists"):
        read_meta(dataset)
    (dataset / "meta.json").write_text('{"test": {"bottle": {}}}')
    with pytest.raises(MetaError, match="test/bottle: must be a list"):
        read_meta(dataset)


def test_split_names_fall_back_to_case_insensitive(dataset):
    _rewrite(dataset, lambda d: d.__setitem__("Test", d.pop("test")))
    meta = read_meta(dataset)
    assert meta.split == "Test" and len(meta) == 4


def test_missing_image_and_mask_name_the_entry(dataset):
    (dataset / "cable/test/cut/0.png").unlink()
    (dataset / "bottle/ground_truth/broken/000_mask.png").unlink()
    with pytest.raises(MetaError) as info:
        read_meta(dataset)
    err = info.value
    assert len(err.problems) == 2
    assert any(
        "test/bottle[1]" in p and "mask not found" in p and "000_mask.png" in p
        for p in err.problems
    )
    assert any(
        "test/cable[1]" in p and "image not found" in p and "cut/0.png" in p for p in err.problems
    )
    assert len(read_meta(dataset, check_files=False)) == 4


def test_class_without_images(dataset):
    _rewrite(dataset, lambda d: d["test"].__setitem__("empty", []))
    with pytest.raises(MetaError, match="test/empty: class has no images"):
        read_meta(dataset)
    assert read_meta(dataset, classes=["bottle"]).classes == ["bottle"]


def test_mask_of_a_normal_image_is_ignored(dataset):
    _rewrite(dataset, lambda d: d["test"]["bottle"][0].__setitem__("mask_path", "nope.png"))
    assert read_meta(dataset).samples["bottle"][0].mask_path is None


def test_optional_keys_and_booleans(dataset):
    def edit(d):
        e = d["test"]["bottle"][1]
        del e["cls_name"], e["specie_name"]
        e["anomaly"] = True
        d["test"]["bottle"][0]["mask_path"] = None

    _rewrite(dataset, edit)
    s = read_meta(dataset).samples["bottle"]
    assert s[1].class_name == "bottle" and s[1].specie_name == "" and s[1].anomaly == 1
    assert s[0].specie_name == "good" and s[0].mask_path is None


def test_many_problems_are_all_reported(dataset):
    def edit(d):
        for e in d["test"]["bottle"] + d["test"]["cable"]:
            e["anomaly"] = 5

    _rewrite(dataset, edit)
    with pytest.raises(MetaError, match="4 problems") as info:
        read_meta(dataset)
    assert len(info.value.problems) == 4


def test_write_meta_roundtrip(dataset, tmp_path):
    data = json.loads((dataset / "meta.json").read_text())
    out = write_meta(dataset, data)
    assert out == dataset / "meta.json"
    text = out.read_text()
    assert text.endswith("\n") and '\n    "test": {' in text
    assert text.index('"anomaly"') < text.index('"cls_name"') < text.index('"img_path"')
    assert json.loads(text) == data
    meta = read_meta(dataset)
    # a DatasetMeta writes back to the same entries (one split)
    write_meta(tmp_path / "copy" / "meta.json", meta)
    again = json.loads((tmp_path / "copy" / "meta.json").read_text())
    assert again == {"test": data["test"]}


def test_write_meta_validates_first(tmp_path):
    bad = {"test": {"bottle": [{"img_path": "a.png", "mask_path": "", "anomaly": 3}]}}
    with pytest.raises(MetaError, match="'anomaly' must be 0 or 1"):
        write_meta(tmp_path, bad)
    assert not (tmp_path / "meta.json").exists()
    assert list(tmp_path.iterdir()) == []
    write_meta(tmp_path, {"train": {}, "test": {"x": []}})  # empty classes are fine to write
    assert (tmp_path / "meta.json").is_file()


def test_meta_error_pickles(tmp_path):
    import pickle

    err = pickle.loads(pickle.dumps(MetaError(tmp_path / "meta.json", ["a", "b"])))
    assert err.problems == ["a", "b"]
