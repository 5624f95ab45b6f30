"""tipsomaly.data.dataset: meta.json → tensors, with unreadable files reported, not fatal."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from tipsomaly.data.dataset import AnomalyDataset, collate_samples, make_loader
from tipsomaly.data.images import load_mask, preprocess
from tipsomaly.data.layouts import build_meta
from tipsomaly.data.meta import read_meta, write_meta

SIZE = 14


@pytest.fixture
def root(mvtec_tree):
    write_meta(mvtec_tree, build_meta(mvtec_tree, "mvtec"))
    return mvtec_tree


def test_items_have_the_documented_shapes(root):
    ds = AnomalyDataset.from_root(root, SIZE)
    assert len(ds) == 7
    item = ds[0]  # bottle/test/broken/000.png
    assert item["error"] is None
    assert item["image"].dtype == torch.float32 and tuple(item["image"].shape) == (3, SIZE, SIZE)
    assert item["mask"].dtype == torch.float32 and tuple(item["mask"].shape) == (SIZE, SIZE)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
    assert item["label"] == 1 and item["has_mask"] is True
    assert item["class_name"] == "bottle" and item["specie_name"] == "broken"
    assert item["path"].endswith("bottle/test/broken/000.png")
    assert item["original_hw"] == (6, 8) and item["index"] == 0
    expected = preprocess(Image.open(item["path"]), SIZE)
    assert torch.equal(item["image"], expected)
    mask_file = root / "bottle/ground_truth/broken/000_mask.png"
    assert torch.equal(item["mask"], load_mask(mask_file, SIZE))
    normal = next(ds[i] for i in range(len(ds)) if ds[i]["label"] == 0)
    assert normal["mask"].sum() == 0 and normal["has_mask"] is False


def test_class_selection_and_no_masks(root):
    ds = AnomalyDataset.from_root(root, SIZE, classes=["wood"], load_masks=False)
    assert len(ds) == 2
    assert all(ds[i]["mask"].sum() == 0 and not ds[i]["has_mask"] for i in range(2))


def test_bad_image_does_not_crash_the_loader(root, caplog):
    bad = root / "bottle/test/good/001.png"
    bad.write_text("not an image")
    meta = read_meta(root)
    ds = AnomalyDataset(meta, SIZE)
    idx = next(i for i, s in enumerate(ds.samples) if s.image_path == bad)
    with caplog.at_level(logging.WARNING):
        item = ds[idx]
    assert item["error"] is not None and "001.png" in item["error"]
    assert "not a recognised image format" in item["error"]
    assert item["image"].shape == (3, SIZE, SIZE) and item["image"].sum() == 0
    assert item["original_hw"] == (0, 0)
    assert "001.png" in caplog.text

    batches = list(make_loader(ds, batch_size=4))
    assert len(batches) == 2
    total = sum(len(b["label"]) for b in batches)
    errors = [e for b in batches for e in b["errors"]]
    assert total == 6 and len(errors) == 1
    assert errors[0]["index"] == idx and errors[0]["path"] == str(bad)
    assert errors[0]["class_name"] == "bottle" and "001.png" in errors[0]["error"]
    for b in batches:
        n = len(b["label"])
        assert b["image"].shape == (n, 3, SIZE, SIZE) and b["mask"].shape == (n, SIZE, SIZE)
        assert b["original_hw"].shape == (n, 2) and b["index"].shape == (n,)
        assert len(b["path"]) == len(b["class_name"]) == len(b["specie_name"]) == n
        assert str(bad) not in b["path"]


def test_bad_mask_is_reported(root):
    (root / "wood/ground_truth/hole/000_mask.png").write_bytes(b"")
    ds = AnomalyDataset.from_root(root, SIZE, classes=["wood"])
    errors = [ds[i]["error"] for i in range(len(ds)) if ds[i]["error"]]
    assert len(errors) == 1 and "000_mask.png" in errors[0] and "empty file" in errors[0]


def test_collate_all_failed_batch(root):
    (root / "wood/test/good/000.png").write_bytes(b"")
    (root / "wood/test/hole/000.png").write_bytes(b"")
    ds = AnomalyDataset.from_root(root, SIZE, classes=["wood"])
    batch = collate_samples([ds[0], ds[1]])
    assert batch["image"].shape == (0, 3, SIZE, SIZE) and batch["mask"].shape == (0, SIZE, SIZE)
    assert batch["label"].shape == (0,) and batch["original_hw"].shape == (0, 2)
    assert len(batch["errors"]) == 2
    with pytest.raises(ValueError):
        collate_samples([])


def test_mask_size_mismatch_is_logged(root, save_mask, caplog):
    save_mask(root / "wood/ground_truth/hole/000_mask.png", size=(16, 12))
    ds = AnomalyDataset.from_root(root, SIZE, classes=["wood"])
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert all(it["error"] is None for it in items)
    assert "is 12x16 but its image" in caplog.text


def test_worker_processes(root):
    ds = AnomalyDataset.from_root(root, SIZE)
    batches = list(make_loader(ds, batch_size=3, num_workers=2))
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert labels == [s.anomaly for s in ds.samples]


def test_invalid_image_size(root):
    with pytest.raises(ValueError):
        AnomalyDataset.from_root(root, 0)


def test_grayscale_16bit_images_in_a_dataset(tmp_path, write_png16):
    root = tmp_path / "g"
    values = np.full((6, 8), 40000, np.uint16)
    write_png16(root / "part/test/good/0.png", values)
    write_meta(root, build_meta(root, "mvtec"))
    item = AnomalyDataset.from_root(root, 4)[0]
    assert item["error"] is None
    assert torch.allclose(item["image"], torch.full((3, 4, 4), (40000 >> 8) / 255.0))
