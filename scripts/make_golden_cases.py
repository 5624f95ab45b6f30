"""Write extra golden cases of other shapes, to catch tests that hard-code the bundled case.

    python scripts/make_golden_cases.py /tmp/goldens
    TIPSOMALY_GOLDENS=/tmp/goldens/tips-swiglu-98:/tmp/goldens/tips-mini-42 pytest tests/...

Each case has the layout of ``tests/fixtures/golden/tips-tiny`` (see the README there): a tiny
randomly initialised model in the official key layout, the inputs, and the expected outputs.

Where the expected arrays come from: NOT from the public reference code (it is not available
here) but from this repository's own port (``tipsomaly.tips`` and ``tipsomaly.method``), which
the bundled ``tips-tiny`` case proves exact against the reference. So these cases check nothing
numerical the bundled case does not already check; their purpose is shape coverage: a test that
passes on ``tips-tiny`` and fails here hard-codes something of that case (its image size, class
list, width, patch grid, prompt length, depth, ...). Do not commit their outputs as reference
fixtures.

The tokenizer is the bundled case's ``tokenizer.model`` (the text tower's ``vocab_size`` may be
larger than the tokenizer's piece count, as with the real checkpoints).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import sentencepiece
import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "tests" / "fixtures" / "golden" / "tips-tiny"

#: name → (vision, text, pipeline, number of images). Every size differs from tips-tiny's.
CASES: dict[str, tuple[dict, dict, dict, int]] = {
    "tips-swiglu-98": (
        {
            "patch_size": 14,
            "embed_dim": 96,
            "depth": 3,
            "num_heads": 3,
            "mlp_ratio": 4.0,
            "ffn": "swiglu",
            "num_register_tokens": 1,
            "layer_scale": True,
            "pos_embed_image_size": 42,
        },
        {"hidden_size": 96, "mlp_dim": 192, "num_heads": 3, "num_layers": 3, "vocab_size": 160},
        {
            "image_size": 98,
            "prompt_type": "object_agnostic",
            "class_names": ["bottle", "cable", "tooth-brush"],
            "n_prompt": 4,
            "sigma": 2,
        },
        9,
    ),
    "tips-mini-42": (
        {
            "patch_size": 14,
            "embed_dim": 32,
            "depth": 1,
            "num_heads": 2,
            "mlp_ratio": 3.0,
            "ffn": "mlp",
            "num_register_tokens": 1,
            "layer_scale": True,
            "pos_embed_image_size": 28,
        },
        {"hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 1, "vocab_size": 512},
        {
            "image_size": 42,
            "prompt_type": "medical",
            "class_names": ["brain"],
            "n_prompt": 3,
            "sigma": 1,
        },
        6,
    ),
}

#: Texts of ``text_ids``: lower case and known to the tiny tokenizer, so that decoding the ids
#: gives them back (the backbone test recovers the texts that way).
TEXTS = (
    "a blurry photo of the broken tooth brush.",
    "flawless",
    "z",
    "an image of the skin with a lesion on the left side of the picture",
)


def random_arrays(module: torch.nn.Module, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random weights for every entry of ``module``'s state dict (the official key names),
    with the statistics of tips-tiny: norms and LayerScale near 1 and 0.5, the rest ~N(0, .05).
    """
    arrays = {}
    for key, value in module.state_dict().items():
        shape = tuple(value.shape)
        if key.endswith(".gamma"):
            data = 0.5 + 0.1 * rng.standard_normal(shape)
        elif ("norm" in key or "ln_" in key) and key.endswith(".weight"):
            data = 1.0 + 0.1 * rng.standard_normal(shape)
        elif key == "mask_token":
            data = np.zeros(shape)
        elif key in ("cls_token", "register_tokens"):
            data = 0.5 * rng.standard_normal(shape)
        elif key == "pos_embed":
            data = 0.2 * rng.standard_normal(shape)
        else:
            data = 0.05 * rng.standard_normal(shape)
        arrays[key] = data.astype(np.float32)
    return arrays


def images_and_masks(n: int, size: int, n_classes: int, rng: np.random.Generator):
    """Images in [0, 1], class ids (round robin), labels (both in every class), masks."""
    images = rng.random((n, 3, size, size), dtype=np.float32)
    class_ids = np.arange(n, dtype=np.int64) % n_classes
    labels = np.zeros(n, dtype=np.int64)
    for k in range(n_classes):
        rows = np.flatnonzero(class_ids == k)
        labels[rows[1::2]] = 1  # every class has normal and anomalous images (n >= 2 per class)
    masks = np.zeros((n, size, size), dtype=np.float32)
    for i in np.flatnonzero(labels):
        h, w = rng.integers(size // 8, size // 3, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        masks[i, y : y + h, x : x + w] = 1.0
        images[i, :, y : y + h, x : x + w] = np.clip(images[i, :, y : y + h, x : x + w] + 0.3, 0, 1)
    return images, class_ids, labels, masks


def metric_cases(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict]:
    from tipsomaly.metrics import image_metrics, pixel_metrics
    from tipsomaly.report.results import TABLE_METRICS

    arrays, cases = {}, {}
    for c in range(2):
        n, side = 7, 40 + 8 * c
        labels = (np.arange(n) % 2).astype(np.int64)
        masks = np.zeros((n, side, side), dtype=np.float32)
        for i in np.flatnonzero(labels):
            y, x = rng.integers(0, side - 10, 2)
            masks[i, y : y + 6 + i, x : x + 9] = 1.0
        maps = (rng.random((n, side, side)) * 0.6 + 0.4 * masks * rng.random()).astype(np.float32)
        scores = (rng.random(n) + 0.3 * labels).astype(np.float32)
        arrays.update(
            {
                f"case{c}_pixel_maps": maps,
                f"case{c}_masks": masks,
                f"case{c}_image_scores": scores,
                f"case{c}_image_labels": labels,
            }
        )
        got = {**image_metrics(scores, labels), **pixel_metrics(maps, masks, aupro="zsad")}
        cases[f"case{c}"] = {"metrics": {k: float(got[k]) for k in TABLE_METRICS}}
    return arrays, cases


def make_case(out: Path, name: str, seed: int) -> Path:
    from tipsomaly.method.detector import Detector
    from tipsomaly.method.pixel_prompts import PixelPrompts
    from tipsomaly.method.prompts import class_embeddings, learned_embeddings, load_prompts
    from tipsomaly.metrics import class_metrics
    from tipsomaly.runners.train import LOSS_NAMES, make_optimizer, pixel_prompt_losses
    from tipsomaly.tips.config import TextConfig, VisionConfig
    from tipsomaly.tips.model import load_model_dir
    from tipsomaly.tips.text import TextTransformer
    from tipsomaly.tips.vision import VisionTransformer

    vision_fields, text_fields, pipeline_fields, n = CASES[name]
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    bundled = json.loads((BUNDLED / "golden.json").read_text())

    vision = {"npz": "vision.npz", **vision_fields}
    text = {
        "npz": "text.npz",
        **text_fields,
        "max_len": 64,
        "tokenizer": "tokenizer.model",
        "temperature_key": "temperature",
    }
    with torch.device("meta"):
        vision_module = VisionTransformer(VisionConfig(**vision))
        text_module = TextTransformer(TextConfig(**text))
    np.savez(folder / "vision.npz", **random_arrays(vision_module, rng))
    text_arrays = random_arrays(text_module, rng)
    text_arrays["temperature"] = np.float32(0.05 + 0.05 * rng.random())
    np.savez(folder / "text.npz", **text_arrays)
    shutil.copy(BUNDLED / "tokenizer.model", folder / "tokenizer.model")

    pipeline = {
        **pipeline_fields,
        "learnable_class_name": "object",
        **{k: bundled["pipeline"][k] for k in ("score", "local_evidence", "pixel_map")},
    }
    config = {
        "what": (
            "generated by scripts/make_golden_cases.py with this repository's own port (proven "
            "exact on tips-tiny), NOT by the reference code: a shape-coverage case"
        ),
        "vision": vision,
        "text": text,
        "pipeline": pipeline,
        "training_step": bundled["training_step"],
        "tolerances": bundled["tolerances"],
    }
    (folder / "golden.json").write_text(json.dumps(config, indent=2))
    model = load_model_dir(folder, description="golden.json")

    size, names = pipeline["image_size"], pipeline["class_names"]
    base = vision["pos_embed_image_size"]
    images, class_ids, labels, masks = images_and_masks(n, size, len(names), rng)
    expected: dict[str, np.ndarray] = {
        "images": images,
        "class_ids": class_ids,
        "labels": labels,
        "masks": masks,
    }
    prompts = load_prompts(pipeline["prompt_type"])
    preambles = (0.02 * rng.standard_normal((2, pipeline["n_prompt"], vision["embed_dim"]))).astype(
        np.float32
    )
    expected["learnable_prompts"] = preambles
    with torch.no_grad():
        cls1, cls2, patches = model.encode_image(torch.from_numpy(images))
        base_cls1, base_cls2, base_patches = model.encode_image(
            torch.from_numpy(images[:2, :, :base, :base])
        )
        ids, paddings = model.tokenizer(list(TEXTS))
        pieces = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        for row, pads, sentence in zip(ids, paddings, TEXTS, strict=True):
            decoded = pieces.decode([int(i) for i, p in zip(row, pads, strict=True) if not p])
            assert decoded == sentence, (decoded, sentence)
        text_emb = model.text(torch.from_numpy(ids).long(), torch.from_numpy(paddings))
        fixed = torch.stack([class_embeddings(model, prompts, c) for c in names])
        learned = learned_embeddings(
            model, prompts, torch.from_numpy(preambles), pipeline["learnable_class_name"]
        )
    expected.update(
        cls1=cls1.numpy(),
        cls2=cls2.numpy(),
        patches=patches.numpy(),
        base_cls1=base_cls1.numpy(),
        base_cls2=base_cls2.numpy(),
        base_patches=base_patches.numpy(),
        text_ids=ids.astype(np.int32),
        text_paddings=paddings.astype(np.int32),
        text_emb=text_emb.numpy(),
        fixed_text=fixed.numpy(),
        learned_text=learned[None].numpy(),
    )
    detector = Detector(
        model,
        prompt_type=pipeline["prompt_type"],
        pixel_prompts=PixelPrompts(torch.from_numpy(preambles)),
        image_size=size,
        sigma=pipeline["sigma"],
        text_cache=False,
    )
    scores = detector.score_batch(torch.from_numpy(images), [names[i] for i in class_ids])
    expected.update(
        global_probs_cls1=scores.global_probs_cls1.numpy(),
        global_probs_cls2=scores.global_probs_cls2.numpy(),
        patch_probs=scores.patch_probs.numpy(),
        image_scores_cls1=scores.score_cls1.numpy(),
        image_scores_cls2=scores.score_cls2.numpy(),
        pixel_maps=scores.maps.numpy(),
    )

    param = torch.from_numpy(preambles).clone().requires_grad_(True)
    terms = pixel_prompt_losses(
        model,
        prompts,
        param,
        patches,
        torch.from_numpy(masks),
        size,
        class_word=pipeline["learnable_class_name"],
    )
    optimizer = make_optimizer(param)
    optimizer.zero_grad()
    terms.total.backward()
    expected["train_grad"] = param.grad.detach().numpy().copy()
    optimizer.step()
    expected["prompts_after_step"] = param.detach().numpy().copy()
    expected["train_loss"] = np.array([terms.values()[k] for k in LOSS_NAMES], dtype=np.float64)
    np.savez(folder / "expected.npz", **expected)

    per_class = {}
    keys = bundled["metrics"]["per_class"][bundled["pipeline"]["class_names"][0]].keys()
    for k, class_name in enumerate(names):
        rows = np.flatnonzero(class_ids == k)
        got = class_metrics(
            expected["image_scores_cls1"][rows],
            expected["image_scores_cls2"][rows],
            labels[rows],
            expected["pixel_maps"][rows],
            masks[rows] > 0.5,
            aupro="zsad",
        )
        per_class[class_name] = {key: float(got[key]) for key in keys}
    metric_arrays, cases = metric_cases(rng)
    np.savez(folder / "metric_cases.npz", **metric_arrays)
    config["metric_cases"] = {"file": "metric_cases.npz", "cases": cases}
    config["metrics"] = {
        "per_class": per_class,
        "definitions": bundled["metrics"]["definitions"],
    }
    (folder / "golden.json").write_text(json.dumps(config, indent=2))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the cases into (one per case)")
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    args = parser.parse_args(argv)
    folders = [make_case(args.out, name, seed) for seed, name in enumerate(args.case or CASES)]
    print(":".join(str(f) for f in folders))
    return 0


if __name__ == "__main__":
    sys.exit(main())
