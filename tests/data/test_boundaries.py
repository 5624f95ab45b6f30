"""Dataset roots are boundaries; meta.json files that are hostile or odd give one MetaError."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tipsomaly.data.dataset import AnomalyDataset
from tipsomaly.data.layouts import LayoutError, build_meta
from tipsomaly.data.meta import MetaError, Sample, read_meta, write_meta

SECRET = "TOKEN-1234-do-not-leak"


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), 80, np.uint8)).save(path)
    return path


def _meta(root: Path, img_path: str, mask_path: str = "", anomaly: int = 0) -> None:
    entry = {"img_path": img_path, "mask_path": mask_path, "anomaly": anomaly}
    (root / "meta.json").write_text(json.dumps({"test": {"bottle": [entry]}}))


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "data"
    _png(root / "bottle" / "ok.png")
    outside = tmp_path / "secret.png"
    outside.write_text(SECRET)
    return root, outside


def test_dotdot_path_is_refused(layout):
    root, _ = layout
    _meta(root, "../secret.png")
    with pytest.raises(MetaError) as info:
        read_meta(root)
    text = str(info.value)
    assert "test/bottle[0]" in text and "outside the dataset root" in text
    assert "allow_outside_root" in text


def test_absolute_path_outside_is_refused_inside_accepted(layout):
    root, outside = layout
    _meta(root, str(outside))
    with pytest.raises(MetaError, match="outside the dataset root"):
        read_meta(root)
    _meta(root, str(root / "bottle" / "ok.png"))
    assert read_meta(root).all_samples()[0].image_path == root / "bottle" / "ok.png"


def test_mask_path_leaving_the_root_is_refused(layout):
    root, _ = layout
    _meta(root, "bottle/ok.png", mask_path="bottle/../../secret.png", anomaly=1)
    with pytest.raises(MetaError, match="mask_path .* outside the dataset root"):
        read_meta(root)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_symlink_inside_the_root_pointing_out_is_refused(layout):
    root, outside = layout
    (root / "bottle" / "link.png").symlink_to(outside)
    _meta(root, "bottle/link.png")
    with pytest.raises(MetaError, match="outside the dataset root"):
        read_meta(root)
    # a root that is itself a symlink is fine: the boundary is its target
    alias = root.parent / "alias"
    alias.symlink_to(root)
    _meta(root, "bottle/ok.png")
    assert len(read_meta(alias)) == 1


def test_allow_outside_root_opts_in(layout):
    root, outside = layout
    _meta(root, "../secret.png")
    meta = read_meta(root, allow_outside_root=True)
    assert meta.all_samples()[0].image_path.resolve() == outside.resolve()
    ds = AnomalyDataset.from_root(root, 14, allow_outside_root=True)
    assert len(ds) == 1
    with pytest.raises(MetaError, match="outside the dataset root"):
        AnomalyDataset.from_root(root, 14)


def test_write_meta_refuses_paths_outside(layout):
    root, _ = layout
    entry = {"img_path": "../secret.png", "mask_path": "", "anomaly": 0}
    with pytest.raises(MetaError, match="outside the dataset root"):
        write_meta(root, {"test": {"bottle": [entry]}})
    assert not (root / "meta.json").exists()
    write_meta(root, {"test": {"bottle": [entry]}}, allow_outside_root=True)


def test_error_rows_never_hold_file_content(layout):
    root, outside = layout
    sample = Sample(outside, None, "bottle", "good", 0)
    item = AnomalyDataset([sample], 14)[0]
    assert item["error"] is not None and "secret.png" in item["error"]
    assert SECRET[:8] not in item["error"] and "TOKEN" not in item["error"]


@pytest.mark.parametrize("depth", [100, 100_000])
def test_deeply_nested_meta_is_one_meta_error(tmp_path, depth):
    (tmp_path / "meta.json").write_text("[" * depth + "]" * depth)
    with pytest.raises(MetaError, match=r"JSON nested \d+\+ levels deep") as info:
        read_meta(tmp_path)
    assert "meta.json" in str(info.value)


def test_depth_counting_ignores_brackets_in_strings(tmp_path):
    _png(tmp_path / "bottle" / "a[[[[.png")
    name = "bottle/a" + "[" * 200 + ".png"
    _png(tmp_path / name)
    entry = {"img_path": name, "mask_path": "", "anomaly": 0}
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"bottle": [entry]}}))
    assert len(read_meta(tmp_path)) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX byte file names")
def test_data_meta_with_a_non_utf8_name_round_trips(tmp_path):
    root = tmp_path / "mvtec"
    _png(root / "bottle" / "train" / "good" / "000.png")
    _png(root / "bottle" / "test" / "good" / "000.png")
    odd = _png(root / "bottle" / "test" / "good" / os.fsdecode(b"caf\xe9.png"))
    path = write_meta(root, build_meta(root, "mvtec"))
    text = path.read_text(encoding="utf-8")  # valid UTF-8 text
    assert "\\udce9" in text
    meta = read_meta(root)
    assert odd in [s.image_path for s in meta]
    assert AnomalyDataset(meta, 14)[1]["error"] is None


def test_unreadable_folder_in_a_layout_is_one_layout_error(tmp_path, monkeypatch):
    root = tmp_path / "mvtec"
    _png(root / "bottle" / "train" / "good" / "000.png")
    _png(root / "bottle" / "test" / "good" / "000.png")
    locked = root / "bottle" / "test"
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(LayoutError, match="cannot read .*bottle/test.*Permission denied"):
        build_meta(root, "mvtec")
