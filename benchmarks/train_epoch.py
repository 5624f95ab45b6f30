"""Time per training epoch: cached patch features versus running the backbone every step.

    python benchmarks/train_epoch.py                                  # B/14 shape, 224 px, CPU
    python benchmarks/train_epoch.py --model l14h --image-size 518 --device cuda
    python benchmarks/train_epoch.py --model path/to/model_dir        # real weights

The same training run (same generated data, seed, prompts and settings) is done twice with
:func:`tipsomaly.runners.train.train`: once with ``feature_cache="memory"`` (the backbone runs
once per image, before the first epoch; each step runs only the text tower) and once with
``feature_cache="none"`` (images are read and the backbone runs at every step, as the reference
code does). Reported: the one-off feature pass, the mean epoch time of each, their ratio, and
the largest difference between the two runs' final prompts (both see the same numbers up to
floating-point noise of batched matrix products).

``--model`` is a preset name — its shape is built with *random* weights, so nothing is
downloaded — or a model directory (real weights). Random backbones use the tokenizer given with
``--tokenizer`` (default: the golden fixtures' small SentencePiece model; every prompt is padded
to 64 tokens anyway, so the text tower's cost does not depend on it).
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tipsomaly.data.meta import write_meta
from tipsomaly.runners.train import TrainConfig, train
from tipsomaly.tips.model import TipsModel, load_model
from tipsomaly.tips.presets import get_preset
from tipsomaly.tips.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
GOLDEN_TOKENIZER = REPO / "tests" / "fixtures" / "golden" / "tips-tiny" / "tokenizer.model"


def random_model(name: str, tokenizer: Path, device: str) -> TipsModel:
    """A preset's architecture with random weights (PyTorch's default initialisation)."""
    preset = get_preset(name)
    torch.manual_seed(0)
    model = TipsModel(
        preset.vision,
        preset.text,
        Tokenizer(tokenizer, max_len=preset.text.max_len),
        temperature=preset.temperature or 0.01,
        name=f"{preset.short_name}-random",
    )
    return model.eval().requires_grad_(False).to(device)


def make_dataset(root: Path, n_images: int, size: int, seed: int = 0) -> Path:
    """``n_images`` noisy images with bright rectangles as defects (2 in 3), masks, meta.json."""
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n_images):
        image = (rng.random((size, size, 3)) * 80 + 60).astype(np.uint8)
        entry = {"img_path": f"img/{i:04d}.png", "mask_path": "", "anomaly": 0}
        if i % 3:
            mask = np.zeros((size, size), np.uint8)
            h, w = rng.integers(size // 10, size // 4, 2)
            y, x = rng.integers(0, size - max(h, w), 2)
            mask[y : y + h, x : x + w] = 255
            image[mask > 0] = 250
            (root / "mask").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(root / "mask" / f"{i:04d}.png")
            entry.update(mask_path=f"mask/{i:04d}.png", anomaly=1, specie_name="rectangle")
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "img" / f"{i:04d}.png")
        entries.append(
            {**entry, "cls_name": "widget", "specie_name": entry.get("specie_name", "good")}
        )
    write_meta(root, {"test": {"widget": entries}})
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="b14h", help="preset (random weights) or model dir")
    parser.add_argument("--tokenizer", type=Path, default=GOLDEN_TOKENIZER)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--prompt-type", default="industrial")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    if Path(args.model).is_dir():
        model, kind = load_model(args.model, device=args.device), "weights from the directory"
    else:
        model, kind = random_model(args.model, args.tokenizer, args.device), "random weights"
    grid = args.image_size // model.patch_size
    steps = math.ceil(args.images / args.batch_size)
    print(
        f"backbone {model.name} ({kind}), D={model.embed_dim}, {args.image_size} px "
        f"({grid}x{grid} patches), {args.images} images, batch {args.batch_size} "
        f"({steps} steps/epoch), {args.epochs} epoch(s), prompts {args.prompt_type}, "
        f"device {args.device}, {torch.get_num_threads()} CPU threads"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", args.images, args.image_size)
        runs = {}
        for cache in ("memory", "none"):
            config = TrainConfig(
                data=data,
                out=Path(tmp) / cache,
                model=model,
                image_size=args.image_size,
                batch_size=args.batch_size,
                epochs=args.epochs,
                prompt_type=args.prompt_type,
                device=args.device,
                feature_cache=cache,
                progress=False,
            )
            runs[cache] = train(config)
    cached, live = runs["memory"], runs["none"]
    t_cached = float(np.mean(cached.epoch_seconds))
    t_live = float(np.mean(live.epoch_seconds))
    diff = (cached.prompts.preambles - live.prompts.preambles).abs().max().item()
    print(f"feature pass (once, before epoch 1):   {cached.feature_seconds:8.2f} s")
    print(
        f"epoch with cached features:            {t_cached:8.2f} s  ({t_cached / steps:.3f} s/step)"
    )
    print(f"epoch running the backbone every step: {t_live:8.2f} s  ({t_live / steps:.3f} s/step)")
    print(f"speed-up per epoch (backbone / cached): {t_live / t_cached:7.2f}x")
    total_cached = cached.feature_seconds + t_cached * 2
    print(
        f"paper's 2 epochs: {total_cached:.2f} s with the cache (feature pass included) vs "
        f"{t_live * 2:.2f} s → {t_live * 2 / total_cached:.2f}x"
    )
    print(f"max |prompts(cached) - prompts(backbone every step)| = {diff:.2e}")


if __name__ == "__main__":
    main()
