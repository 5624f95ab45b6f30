"""What the HTML report costs: writing it during ``predict``, and opening a 10,000-image one.

    python benchmarks/report_cost.py                    # 120 images, 3 rounds, 10,000 rows
    python benchmarks/report_cost.py --images 400 --rounds 5 --size 512

1. Writing. The same ``predict`` run (the library call :func:`run_predict`, model loaded once:
   process start-up would only dilute the ratio) on generated ``--size`` px images, with and
   without ``report=True`` (thumbnails written with each image's other outputs, then the
   page and its histogram), in rounds that alternate which goes first; printed: the seconds
   of each and the median over rounds of the round's ratio, as the cost in %. The tiny test
   model scores an image in a few milliseconds, far faster than a real TIPS model (B/14 at
   448 px takes about a second on a CPU): the share measured here is an upper bound of the
   report's share in a real run. Besides the A/B ratio (as noisy as the machine's load), the
   report's own work inside each report run is timed (each image's thumbnail, the page) and
   given as a share of the rest of that same run, and extrapolated to 1,000 and 10,000
   images (the page's cost is paid once).
2. Opening. A report of ``--rows`` images (rows of random scores in 3 classes; every card's
   thumbnail a real JPEG file, hard links of one) is written, then opened from the file system
   in headless Chromium (as the tests do); printed: the seconds it took to write, and the
   browser's own times, from navigation start, to the page script's ``report-ready`` mark
   (cards of the first page on the screen, filters working) and to the first page's
   thumbnails all decoded, and the time a class filter takes over all the rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from synthetic import tiny_model_dir  # noqa: E402
from tipsomaly.method.config import DetectorConfig  # noqa: E402
from tipsomaly.method.detector import Detector  # noqa: E402
from tipsomaly.report.predict_page import THUMBS, write_predict_report  # noqa: E402
from tipsomaly.runners.predict import run_predict  # noqa: E402


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """``n`` textured ``size`` px JPEG images, a dark square on every fourth."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = rng.random((size // 8 + 1, size // 8 + 1))
        img = np.kron(base, np.ones((8, 8)))[:size, :size] * 0.6 + 0.4 * rng.random((size, size))
        rgb = (np.stack([img, img * 0.95, img * 0.85], -1) * 255).astype(np.uint8)
        if i % 4 == 0:
            rgb[size // 4 : size // 3, size // 3 : size // 2] = 10
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(rgb).save(path, quality=90)
        out.append(path)
    return out


class Stopwatch:
    """Wraps functions of a module to add up the seconds spent in them."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, module: object, name: str) -> None:
        inner = getattr(module, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        setattr(module, name, timed)


def writing_cost(args: argparse.Namespace, work: Path) -> None:
    from tipsomaly.runners import image_outputs
    from tipsomaly.runners import predict as predict_runner

    model = tiny_model_dir(work / "model")
    images = write_images(work / "images", args.images, args.size)
    config = DetectorConfig(model=str(model), image_size=70, dtype="fp32", pixel_threshold=0.5)
    detector = Detector.from_config(config)
    run_predict(detector, images[:4], class_name="tile", out_dir=work / "warm", report=True)
    # the report's own work inside a run: each image's thumbnail, then the page
    thumbs, page = Stopwatch(), Stopwatch()
    thumbs.wrap(image_outputs, "thumbnail")
    thumbs.wrap(image_outputs, "save_thumbnail")
    page.wrap(predict_runner, "write_predict_report")
    times: dict[bool, list[float]] = {False: [], True: []}
    ratios, shares, per_image, pages = [], [], [], []
    for r in range(args.rounds):
        this = {}
        for report in (False, True) if r % 2 == 0 else (True, False):
            out = work / f"out-{r}-{int(report)}"
            thumbs.seconds = page.seconds = 0.0
            start = time.perf_counter()
            run_predict(detector, images, class_name="tile", out_dir=out, report=report)
            this[report] = time.perf_counter() - start
            times[report].append(this[report])
            if report:
                added = thumbs.seconds + page.seconds
                shares.append(added / (this[report] - added))
                per_image.append(thumbs.seconds / args.images)
                pages.append(page.seconds)
            shutil.rmtree(out)
        ratios.append(this[True] / this[False])
    plain, with_report = statistics.median(times[False]), statistics.median(times[True])
    n = args.images
    print(f"predict of {n} images of {args.size} px (tiny model, 70 px, fp32, pixel threshold "
          f"0.5, overlays at full size; median of {args.rounds} rounds)")  # fmt: skip
    print(f"  without report   {plain:8.2f} s   ({1000 * plain / n:.1f} ms/image)")
    print(f"  with report      {with_report:8.2f} s   ({1000 * with_report / n:.1f} ms/image)")
    print(f"  A/B ratio        {100 * (statistics.median(ratios) - 1):+8.1f} %  "
          f"(per round: {', '.join(f'{100 * (x - 1):+.1f}' for x in ratios)}; as noisy as "
          "the machine's load)")  # fmt: skip
    thumb_ms, page_s = 1000 * statistics.median(per_image), statistics.median(pages)
    print(f"  report's work inside the run: {thumb_ms:.1f} ms per image (thumbnail) + "
          f"{page_s:.2f} s (page, histogram) = {100 * statistics.median(shares):.1f} % of the "
          "rest of the same run")  # fmt: skip
    run_ms = 1000 * (with_report - statistics.median(per_image) * n - page_s) / n
    for big in (1_000, 10_000):
        share = (thumb_ms * big + 1000 * page_s) / (run_ms * big)
        print(f"  at {big:6d} images: {100 * share:.1f} % (this run's rates)")


def open_time(args: argparse.Namespace, work: Path) -> None:
    from selenium import webdriver

    out = work / "big"
    rng = np.random.default_rng(1)
    thumb = out / THUMBS / "seed.jpg"
    thumb.parent.mkdir(parents=True)
    Image.fromarray((rng.random((128, 258, 3)) * 255).astype(np.uint8)).save(thumb)
    rows = []
    for i in range(args.rows):
        name = f"line{i % 7}/img_{i:05d}"
        (out / THUMBS / name).parent.mkdir(parents=True, exist_ok=True)
        os.link(thumb, out / THUMBS / f"{name}.jpg")
        score = float(rng.random() * 0.5 + 0.5)
        defects = [{"id": 1, "peak": 0.8, "area_px": 120, "bbox": [3, 4, 20, 30]}] * (i % 3 == 0)
        rows.append({"path": f"/data/{name}.png", "class_name": ("tile", "wood", "grid")[i % 3],
                     "image_score": score, "status": "ok", "error": None, "name": name,
                     "is_anomalous": score > 0.9, "defects": defects})  # fmt: skip
    start = time.perf_counter()
    page = write_predict_report(out, rows, {"image_threshold": 0.9}, overlays=None)
    written = time.perf_counter() - start
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1200"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")),
                              options=options)  # fmt: skip
    ready, shown, filtered = [], [], []
    try:
        for _ in range(args.rounds):
            driver.get("about:blank")
            driver.get(page.as_uri())
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                done = driver.execute_script(
                    "const m = performance.getEntriesByName('report-ready');"
                    "const imgs = [...document.querySelectorAll('#gallery img')];"
                    "const vis = imgs.filter(i => i.getBoundingClientRect().top < innerHeight);"
                    "if (!m.length || !vis.every(i => i.complete)) return null;"
                    "const r = performance.getEntriesByType('resource')"
                    ".filter(e => vis.some(i => i.src === e.name));"
                    "return [m[0].startTime, Math.max(m[0].startTime, ...r.map(e => e.responseEnd))"
                    ", document.querySelectorAll('#gallery .card').length];"
                )
                if done:
                    break
                time.sleep(0.02)
            assert done and done[2] > 0, "the report did not become usable in 30 s"
            ready.append(done[0])
            shown.append(done[1])
            filtered.append(
                driver.execute_script(
                    "const s = document.getElementById('f-class'); s.value = 'wood';"
                    "const t = performance.now(); s.dispatchEvent(new Event('change'));"
                    "return performance.now() - t;"
                )
            )
    finally:
        driver.quit()
    size = page.stat().st_size / 1e6
    print(f"report of {args.rows} images: written in {written:.2f} s ({size:.1f} MB page)")
    print(f"  usable (report-ready mark)      {statistics.median(ready):7.0f} ms after navigation "
          f"start (median of {len(ready)}: {', '.join(f'{x:.0f}' for x in ready)})")  # fmt: skip
    print(f"  first screen of thumbnails      {statistics.median(shown):7.0f} ms")
    print(f"  a class filter over every row   {statistics.median(filtered):7.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=120, help="images of the predict run")
    p.add_argument("--size", type=int, default=384, help="their side, in pixels")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", type=int, default=10_000, help="rows of the report opened")
    p.add_argument("--only", choices=("writing", "opening"))
    args = p.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="report-cost-") as tmp:
        if args.only != "opening":
            writing_cost(args, Path(tmp))
        if args.only != "writing":
            open_time(args, Path(tmp))
    print(f"total {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
