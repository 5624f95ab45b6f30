"""Regenerate ``samples/`` (small brick-wall images, one normal and three with drawn defects)
and the README figure ``docs/predict-example.png``, deterministically.

Source: scikit-image's ``skimage.data.brick()`` (512×512 grey; CC0, from CC0Textures
"Bricks25"; see the function's docstring). Each sample is one 256×256 quadrant of it; the
defects are drawn here (the drawings are ours, also CC0). Needs the test extra
(``pip install -e ".[test]"`` for scikit-image). Usage::

    python scripts/make_samples.py            # writes samples/*.png and docs/predict-example.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
FIGURE = ROOT / "docs" / "predict-example.png"
SIDE = 256
SUPER = 4  # supersampling factor for anti-aliased drawing


def _quadrants(texture: np.ndarray) -> list[np.ndarray]:
    """The four SIDE×SIDE quadrants of a 2·SIDE square texture (TL, TR, BL, BR), float32."""
    t = texture.astype(np.float32)
    return [t[y : y + SIDE, x : x + SIDE] for y in (0, SIDE) for x in (0, SIDE)]


def _coverage(draw_fn) -> np.ndarray:
    """Anti-aliased coverage (SIDE, SIDE) in [0, 1] of shapes drawn at SUPER× by ``draw_fn``."""
    big = Image.new("L", (SIDE * SUPER, SIDE * SUPER), 0)
    draw_fn(ImageDraw.Draw(big), SUPER)
    small = big.resize((SIDE, SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(a, sigma=sigma, preserve_range=True).astype(np.float32)


def scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A long thin bright scratch with a dark shadow; returns (image, defect coverage)."""
    t = np.linspace(0.0, 1.0, 40)
    xs = 40 + 175 * t
    ys = 70 + 110 * t + 18 * np.sin(3.2 * t) + rng.normal(0, 0.6, t.size)
    pts = list(zip(xs, ys, strict=True))

    def line(dx: float, dy: float, width: float):
        return lambda d, s: d.line(
            [((x + dx) * s, (y + dy) * s) for x, y in pts], fill=255, width=int(width * s)
        )

    core = _coverage(line(0, 0, 2.5))
    shadow = _coverage(line(1.5, 1.5, 3.0)) * (1 - core)
    out = img * (1 - 0.6 * shadow) + 0 * shadow
    out = out * (1 - core) + 235.0 * core
    return out, np.maximum(core, shadow)


def stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An irregular dark stain with a darker rim (a dried liquid); returns (image, coverage)."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    field = np.zeros((SIDE, SIDE), np.float32)
    for _ in range(9):
        cy, cx = rng.normal((140, 120), 20)
        r = rng.uniform(8, 16)
        field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    envelope = np.exp(-((yy - 140) ** 2 + (xx - 120) ** 2) / (2 * 45.0**2))
    field += 2.5 * _blur(rng.normal(0, 1, (SIDE, SIDE)).astype(np.float32), 5.0) * envelope
    inside = np.clip((field - 0.6) * 4.0, 0.0, 1.0)
    inside = _blur(inside, 1.5)
    rim = np.clip(inside * (1 - inside) * 4.0, 0.0, 1.0)
    out = img * (1 - 0.45 * inside) * (1 - 0.35 * rim)
    return out, inside


def hole(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark hole with a lit lower-right edge and a shadowed upper-left one."""
    cy, cx, ry, rx = 150.0, 105.0, 24.0, 30.0

    def ellipse(dx: float, dy: float, grow: float):
        return lambda d, s: d.ellipse(
            [
                (cx - rx - grow + dx) * s,
                (cy - ry - grow + dy) * s,
                (cx + rx + grow + dx) * s,
                (cy + ry + grow + dy) * s,
            ],
            fill=255,
        )

    inner = _coverage(ellipse(0, 0, 0))
    lit = np.clip(_coverage(ellipse(2.5, 2.5, 2)) - inner, 0, 1)
    dark_edge = np.clip(_coverage(ellipse(-2.5, -2.5, 2)) - inner, 0, 1)
    depth = 18.0 + rng.normal(0, 3, img.shape).astype(np.float32)
    out = img * (1 - inner) + depth * inner
    out = out * (1 - 0.5 * dark_edge) + 0 * dark_edge
    out = out * (1 - 0.6 * lit) + 225.0 * 0.6 * lit
    return out, np.maximum(inner, np.maximum(lit, dark_edge))


def make_samples() -> dict[str, np.ndarray]:
    """{file name: defect coverage (SIDE, SIDE) in [0, 1]} after writing samples/*.png."""
    from skimage import data

    rng = np.random.default_rng(20260101)
    good, q_scratch, q_stain, q_hole = _quadrants(data.brick())
    SAMPLES.mkdir(exist_ok=True)
    made = {"brick_good.png": (good, np.zeros((SIDE, SIDE), np.float32))}
    made["brick_scratch.png"] = scratch(q_scratch, rng)
    made["brick_stain.png"] = stain(q_stain, rng)
    made["brick_hole.png"] = hole(q_hole, rng)
    cover = {}
    for name, (img, defect) in made.items():
        pixels = np.clip(np.round(img), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(SAMPLES / name, optimize=True)
        cover[name] = defect
    return cover


def make_figure(cover: dict[str, np.ndarray], name: str = "brick_stain.png") -> None:
    """Input | overlay of a SYNTHETIC map that peaks on the drawn defect (shows the format)."""
    sys.path.insert(0, str(ROOT / "src"))
    from tipsomaly.report.overlay import overlay

    image = Image.open(SAMPLES / name).convert("RGB")
    synthetic = 0.12 + 0.8 * np.clip(_blur(cover[name], 9.0) * 1.5, 0.0, 1.0)
    panel = overlay(image, synthetic, alpha=0.5, scale="fixed")
    gap = 8
    fig = np.full((SIDE, 2 * SIDE + gap, 3), 255, np.uint8)
    fig[:, :SIDE] = np.asarray(image)
    fig[:, SIDE + gap :] = panel
    FIGURE.parent.mkdir(exist_ok=True)
    Image.fromarray(fig, mode="RGB").save(FIGURE, optimize=True)


def main() -> None:
    cover = make_samples()
    make_figure(cover)
    for p in sorted(SAMPLES.glob("*.png")) + [FIGURE]:
        print(f"{p.relative_to(ROOT)}  {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
