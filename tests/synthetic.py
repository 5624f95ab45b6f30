"""Small generated inputs for end-to-end tests: a tiny model directory and MVTec-like datasets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from goldens import golden_dirs


def tiny_vision(golden: Path | None = None) -> dict:
    """The vision description (``patch_size``, ``embed_dim``, ...) of the model that
    :func:`tiny_model_dir` writes: tests size their inputs from it, never from one case."""
    golden = golden or golden_dirs()[0]
    return dict(json.loads((golden / "golden.json").read_text())["vision"])


def tiny_model_dir(dest: Path, golden: Path | None = None) -> Path:
    """A model directory (model.json + npz + tokenizer) holding a golden case's tiny model."""
    golden = golden or golden_dirs()[0]
    config = json.loads((golden / "golden.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(golden / config["vision"]["npz"], dest / "vision.npz")
    shutil.copy(golden / config["text"]["npz"], dest / "text.npz")
    shutil.copy(
        golden / config["text"].get("tokenizer", "tokenizer.model"), dest / "tokenizer.model"
    )
    description = {
        "vision": {**config["vision"], "npz": "vision.npz"},
        "text": {**config["text"], "npz": "text.npz", "tokenizer": "tokenizer.model"},
    }
    (dest / "model.json").write_text(json.dumps(description))
    return dest


def mvtec_tree(
    root: Path,
    classes: dict[str, tuple[int, int]],
    size: int = 48,
    seed: int = 0,
) -> Path:
    """An MVTec-AD-like tree with ``meta.json``: class → (normal count, anomalous count).

    Anomalous images get a bright rectangle (one or two regions) and its mask.
    """
    rng = np.random.default_rng(seed)
    meta: dict = {"train": {}, "test": {}}
    for cls, (n_good, n_bad) in classes.items():
        entries = []
        for kind, count in (("good", n_good), ("scratch", n_bad)):
            (root / cls / "test" / kind).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = (rng.random((size, size, 3)) * 80 + 60).astype(np.uint8)
                name = f"{i:03d}.png"
                entry = {
                    "img_path": f"{cls}/test/{kind}/{name}",
                    "mask_path": "",
                    "cls_name": cls,
                    "specie_name": kind,
                    "anomaly": int(kind != "good"),
                }
                if kind != "good":
                    mask = np.zeros((size, size), np.uint8)
                    for _ in range(1 + i % 2):
                        y, x = rng.integers(0, size - 12, 2)
                        mask[y : y + 10, x : x + 10] = 255
                    image[mask > 0] = 250
                    mdir = root / cls / "ground_truth" / kind
                    mdir.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(mdir / f"{i:03d}_mask.png")
                    entry["mask_path"] = f"{cls}/ground_truth/{kind}/{i:03d}_mask.png"
                Image.fromarray(image).save(root / cls / "test" / kind / name)
                entries.append(entry)
        meta["test"][cls] = entries
        meta["train"][cls] = []
    (root / "meta.json").write_text(json.dumps(meta, indent=1))
    return root
