"""Peak memory of tiled inference on a 20-megapixel image with a TIPS B/14 (random weights).

    python benchmarks/tiling_memory.py            # 5472x3648 px, B/14 at 518 px, --tile auto
    python benchmarks/tiling_memory.py --quick    # the same image, B/14 at 224 px (smoke)

Runtime on 2 CPU cores (fp32, torch's default threads): the default run scores 54 tiles of
810 px at 518 px, about 4-10 minutes (606 s measured with other work sharing the cores, load
average 5); ``--quick`` (54 tiles of 857 px at 224 px) about 1.5 minutes.

Measured (this machine: 2 cores, torch 2.13 CPU, Pillow 13):

=========  =====================  ==============  ==============  ============
input      tiles                  RSS with model  peak RSS        for the image
=========  =====================  ==============  ==============  ============
518 px     54 of 810 px (6 × 9)   0.99 GB         1.69 GB         +0.70 GB
224 px     54 of 857 px (6 × 9)   1.00 GB         1.47 GB         +0.47 GB
=========  =====================  ==============  ==============  ============

Both well under the 4 GB target. The random model's map lies above the 0.5 threshold almost
everywhere, so the run also labels a 20-MP foreground (the worst case for the defect records;
one region): that part took 4 GB more before the labelling worked in bands.

What is measured: the whole of ``tipsomaly predict IMAGE --tile auto --threshold T
--save-maps --boxes`` as a library call (:func:`tipsomaly.runners.predict.run_predict`) on
one generated 20-MP PNG (a texture with three dark defects), in a fresh process, so its peak
resident set size (``ru_maxrss``, Linux: VmHWM) covers everything one image costs: decoding
(60 MB of RGB), the tiles' batches through the backbone, the blending buffers (two float32
maps of the image's size), the map at the original size, the defect records, the overlay
with its boxes and the saved map. The model is the B/14 preset's architecture with random
weights (``benchmarks/throughput.py:random_model``; nothing downloaded); the text tower runs
once for the class. Printed: the tile grid, seconds, the RSS after the model is built, the
peak RSS and the peak's increase over the model, against the 4 GB target of issue 14.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET_GB = 4.0
HEIGHT, WIDTH = 3648, 5472  # 19.96 megapixels (a 20-MP sensor's 3:2 frame)


def make_image(path: Path, seed: int = 0) -> None:
    """A 20-MP textured PNG with three dark defects, made row band by row band (uint8)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    xx = np.arange(WIDTH, dtype=np.float32)
    for y0 in range(0, HEIGHT, 256):
        yy = np.arange(y0, min(y0 + 256, HEIGHT), dtype=np.float32)[:, None]
        base = 128 + 50 * np.sin(2 * np.pi * xx / 23) * np.cos(2 * np.pi * yy / 17)
        band = base + rng.normal(0, 6, base.shape).astype(np.float32)
        out[y0 : y0 + len(yy)] = np.clip(band, 0, 255).astype(np.uint8)[..., None]
    for y, x, s in ((900, 1200, 12), (2000, 4000, 30), (3100, 700, 60)):
        out[y : y + s, x : x + s] = 20
    Image.fromarray(out).save(path, compress_level=1)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KB on Linux


def current_rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def child(image: str, out: str, size: int, batch: int) -> None:
    """The measured run (a fresh process): prints one JSON line."""
    import torch
    from throughput import random_model

    from tipsomaly.method.detector import Detector
    from tipsomaly.runners.predict import run_predict

    torch.manual_seed(0)
    model = random_model("b14h")
    det = Detector(model, image_size=size, text_cache=False, tile="auto", batch_size=batch)
    det.class_text("textile")  # the text tower once, before the measured part
    model_rss = current_rss_gb()
    grid = det.tile_grid((HEIGHT, WIDTH))
    start = time.perf_counter()
    summary = run_predict(
        det,
        [image],
        class_name="textile",
        out_dir=out,
        threshold=0.5,
        save_maps=True,
        boxes=True,
        min_defect_area=4,
    )
    seconds = time.perf_counter() - start
    row = summary.rows[0]
    print(
        json.dumps(
            {
                "status": row["status"],
                "error": row["error"],
                "tiles": len(grid),
                "grid": list(grid.shape),
                "tile": grid.tile,
                "seconds": seconds,
                "model_rss_gb": model_rss,
                "peak_rss_gb": peak_rss_gb(),
                "defects": len(row.get("defects") or []),
                "threads": torch.get_num_threads(),
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="224-px model input (smoke run)")
    p.add_argument("--image-size", type=int, default=None, help="model input (default 518)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per forward pass")
    p.add_argument("--child", nargs=2, metavar=("IMAGE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    size = args.image_size or (224 if args.quick else 518)
    if args.child:
        child(*args.child, size, args.batch_size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "20mp.png"
        t0 = time.perf_counter()
        make_image(image)
        print(f"{WIDTH}x{HEIGHT} px ({WIDTH * HEIGHT / 1e6:.1f} MP) PNG written in "
              f"{time.perf_counter() - t0:.0f} s; scoring it in a fresh process ...")  # fmt: skip
        command = [sys.executable, __file__, "--child", str(image), str(Path(tmp) / "out")]
        command += ["--image-size", str(size), "--batch-size", str(args.batch_size)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"the measured run failed:\n{done.stderr[-3000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
    verdict = "under" if r["peak_rss_gb"] < TARGET_GB else "OVER"
    print(
        f"B/14 (random weights) at {size} px, fp32, {r['threads']} threads, batch "
        f"{args.batch_size}: --tile auto = {r['tile']} px, {r['grid'][0]}x{r['grid'][1]} = "
        f"{r['tiles']} tiles\n"
        f"  time {r['seconds']:.0f} s ({r['seconds'] / r['tiles']:.2f} s/tile), row "
        f"{r['status']}, {r['defects']} defect record(s)\n"
        f"  RSS with the model loaded {r['model_rss_gb']:.2f} GB; peak RSS of the whole "
        f"predict {r['peak_rss_gb']:.2f} GB (+{r['peak_rss_gb'] - r['model_rss_gb']:.2f} GB "
        f"for the image): {verdict} the {TARGET_GB:.0f} GB target"
    )


if __name__ == "__main__":
    main()
