"""Benchmark of tipsomaly.metrics against straightforward baselines on VisA-sized synthetic data.

    python benchmarks/metrics_benchmark.py                      # 2,162 maps of 518x518
    python benchmarks/metrics_benchmark.py --quick              # small smoke run
    python benchmarks/metrics_benchmark.py --zsad-baseline-subset 2162   # ZSAD loop at full scale

By default the baselines run on the first 200 images: scikit-learn and the MVTec scheme need
about 50 bytes per pixel (~30 GB for all 580 M VisA-sized pixels).

Data: ``--n-images`` float32 maps of ``--size``^2 pixels, ~55% anomalous images with 2-5
elliptical defect regions each; maps are noise plus a bump over each defect (so they correlate
with the masks), image scores are the map maxima plus noise.

Baselines (written here, the way the usual evaluation scripts do it):
  * pixel AUROC / AP / F1-max: scikit-learn ``roc_auc_score``, ``average_precision_score`` and
    ``precision_recall_curve`` (+ max 2PR/(P+R)) on all pixels;
  * AUPRO ZSAD: the zero-shot papers' loop — for each of the 200 thresholds binarise all maps,
    then loop over every region of every mask (regions are labelled once here, which is
    faster than the original code that re-labels the masks at every threshold);
  * AUPRO MVTec: the official MVTec AD scheme — per-pixel FP / PRO increments, argsort of all
    pixels, cumulative sums, distinct thresholds, trapezoid to FPR 0.3;
  * image metrics: scikit-learn.

The baselines can run on the first N images only (``--baseline-subset``, ``--zsad-baseline-
subset``); their times are then also shown scaled by n_images / N (a linear extrapolation,
which under-estimates the sorting-based baselines) and labelled as such. Ours always runs on
all images and also on the same subset, for a like-for-like ratio.

Memory: peak of numpy allocations traced by ``tracemalloc`` during a separate run of each call
(times are measured without tracing). The ZSAD baseline loop is traced on 3 thresholds only
(its memory does not depend on the number of thresholds).
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tipsomaly.metrics import (  # noqa: E402
    aupro_mvtec,
    aupro_zsad,
    image_metrics,
    pixel_metrics,
    ranking_metrics,
)

MB = 1 << 20


# ----------------------------------------------------------------------------- data


def make_data(
    n_images: int, size: int, anomalous_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic maps (N, S, S) float32, masks (N, S, S) bool, image scores and labels (N,)."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n_images, size, size), dtype=np.float32)
    masks = np.zeros((n_images, size, size), dtype=bool)
    labels = rng.random(n_images) < anomalous_fraction
    for i in range(n_images):
        maps[i] = rng.random((size, size), dtype=np.float32)
        maps[i] *= 0.7
        if not labels[i]:
            continue
        for _ in range(rng.integers(2, 6)):
            ry, rx = rng.uniform(0.02, 0.09, 2) * size
            cy, cx = rng.uniform(0, size, 2)
            y0, y1 = int(max(0, cy - 3 * ry)), int(min(size, cy + 3 * ry + 1))
            x0, x1 = int(max(0, cx - 3 * rx)), int(min(size, cx + 3 * rx + 1))
            yy, xx = np.mgrid[y0:y1, x0:x1]
            d2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            masks[i, y0:y1, x0:x1] |= d2 <= 1
            maps[i, y0:y1, x0:x1] += (0.6 * np.exp(-d2 / 2)).astype(np.float32)
        if not masks[i].any():  # a blob fell outside the image
            masks[i, size // 2, size // 2] = True
    scores = maps.max(axis=(1, 2)) + rng.normal(0, 0.25, n_images).astype(np.float32)
    return maps, masks, scores, labels


# ------------------------------------------------------------------------- baselines


def baseline_ranking(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """scikit-learn on all pixels (imported here: only the benchmark needs it)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    y, s = masks.ravel(), maps.ravel()
    precision, recall, _ = precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    return {
        "auroc": roc_auc_score(y, s),
        "ap": average_precision_score(y, s),
        "f1-max": float(f1.max()),
    }


def baseline_sklearn_single(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

    def auroc_(maps, masks):
        return roc_auc_score(masks.ravel(), maps.ravel())

    def ap_(maps, masks):
        return average_precision_score(masks.ravel(), maps.ravel())

    def f1_(maps, masks):
        precision, recall, _ = precision_recall_curve(masks.ravel(), maps.ravel())
        return float((2 * precision * recall / np.maximum(precision + recall, 1e-300)).max())

    return {"auroc": auroc_, "ap": ap_, "f1-max": f1_}[name]


def baseline_aupro_zsad(
    maps: np.ndarray, masks: np.ndarray, max_step: int = 200, max_fpr: float = 0.3
) -> float:
    """The ZSAD per-threshold, per-region loop (regions labelled once, numpy-1.x thresholds)."""
    from skimage import measure
    from sklearn.metrics import auc

    lo, hi = maps.min(), maps.max()
    thresholds = np.arange(np.float64(lo), np.float64(hi), np.float64(hi - lo) / max_step)
    thresholds = thresholds.astype(maps.dtype)
    regions = [[r.coords for r in measure.regionprops(measure.label(m))] for m in masks]
    normal = ~masks
    n_normal = normal.sum()
    binary = np.empty(maps.shape, dtype=bool)
    pros, fprs = [], []
    for th in thresholds:
        np.greater(maps, th, out=binary)
        overlaps = []
        for b, coords_list in zip(binary, regions, strict=True):
            for coords in coords_list:
                overlaps.append(b[coords[:, 0], coords[:, 1]].sum() / len(coords))
        pros.append(np.mean(overlaps))
        fprs.append(np.logical_and(normal, binary).sum() / n_normal)
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < max_fpr
    x = fprs[keep]
    x = (x - x.min()) / (x.max() - x.min())
    return float(auc(x, pros[keep]))


def zsad_loop_memory_run(maps: np.ndarray, masks: np.ndarray) -> None:
    """The ZSAD loop on 3 thresholds: same peak memory, a fraction of the time."""
    try:
        baseline_aupro_zsad(maps, masks, max_step=3)
    except ValueError:  # fewer than two points with FPR < 0.3: fine for a memory run
        pass


def baseline_aupro_mvtec(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """The official MVTec AD scheme: per-pixel increments, argsort of all pixels, cumsums."""
    from scipy import ndimage

    fp_change = np.zeros(maps.shape, dtype=np.uint32)
    pro_change = np.zeros(maps.shape, dtype=np.float64)
    n_ok = n_regions = 0
    structure = np.ones((3, 3), dtype=int)
    for i, mask in enumerate(masks):
        labelled, n = ndimage.label(mask, structure)
        ok = labelled == 0
        fp_change[i] = ok
        n_ok += int(ok.sum())
        n_regions += n
        for k in range(1, n + 1):
            region = labelled == k
            pro_change[i][region] = 1.0 / region.sum()
    flat = maps.ravel()
    order = np.argsort(flat)[::-1]
    scores = flat[order]
    fprs = np.cumsum(fp_change.ravel()[order]) / n_ok
    pros = np.cumsum(pro_change.ravel()[order]) / n_regions
    del order, fp_change, pro_change
    keep = np.append(np.diff(scores) != 0, True)
    x = np.concatenate(([0.0], fprs[keep], [1.0]))
    y = np.concatenate(([0.0], np.minimum(pros[keep], 1.0), [1.0]))
    n_in = int(np.searchsorted(x, max_fpr, side="right"))
    area = float(np.sum((x[1:n_in] - x[: n_in - 1]) * (y[1:n_in] + y[: n_in - 1]) / 2))
    if x[n_in - 1] < max_fpr:
        x0, x1, y0, y1 = x[n_in - 1], x[n_in], y[n_in - 1], y[n_in]
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        area += (y0 + y_end) / 2 * (max_fpr - x0)
    return area / max_fpr


def baseline_image(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {f"image_{k}": v for k, v in baseline_ranking(scores, labels).items()}


# ---------------------------------------------------------------------------- timing


def measure(fn: Callable, *args, memory: bool = True, memory_fn: Callable | None = None):
    """(result, seconds, peak traced MB or nan); memory traced in a separate run."""
    gc.collect()
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    peak = float("nan")
    if memory:
        gc.collect()
        tracemalloc.start()
        (memory_fn or fn)(*args)
        peak = tracemalloc.get_traced_memory()[1] / MB
        tracemalloc.stop()
    return result, seconds, peak


def fmt_s(seconds: float) -> str:
    return "-" if np.isnan(seconds) else f"{seconds:9.2f}"


def fmt_mb(mb: float) -> str:
    return "-" if np.isnan(mb) else f"{mb:9.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n-images", type=int, default=2162)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--anomalous-fraction", type=float, default=0.55)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--baseline-subset",
        type=int,
        default=200,
        help="run the sklearn and MVTec baselines on the first N images (default: 200)",
    )
    parser.add_argument(
        "--zsad-baseline-subset",
        type=int,
        default=None,
        help="run the ZSAD-loop baseline on the first N images (default: --baseline-subset)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="time our metrics only")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc runs")
    parser.add_argument("--quick", action="store_true", help="64 maps of 256x256")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_images, args.size = 64, 256
    n = args.n_images
    sub = min(n, args.baseline_subset or n)
    zsub = min(n, args.zsad_baseline_subset or sub)
    memory = not args.no_memory

    t0 = time.perf_counter()
    maps, masks, scores, labels = make_data(n, args.size, args.anomalous_fraction, args.seed)
    n_pix = maps.size
    print(
        f"data: {n} maps of {args.size}x{args.size} = {n_pix / 1e6:.1f} M pixels "
        f"({maps.nbytes / MB:.0f} MB float32), {labels.mean():.0%} anomalous images, "
        f"{masks.mean():.2%} anomalous pixels; generated in {time.perf_counter() - t0:.1f} s"
    )
    print(f"baseline subsets: sklearn/MVTec first {sub} images, ZSAD loop first {zsub} images")
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}\n", flush=True)

    rows = []  # (name, ours_full, ours_mb, ours_sub_s, base_sub_s, base_n, base_mb)

    def ours_on(fn, n_img, *extra):
        return measure(fn, maps[:n_img], masks[:n_img], *extra, memory=memory and n_img == n)

    def run(name, ours_fn, base_fn, base_n, base_memory_fn=None):
        value, t_full, mb = ours_on(ours_fn, n)
        t_sub, base_value, t_base, base_mb = float("nan"), None, float("nan"), float("nan")
        if not args.no_baseline and base_fn is not None:
            if base_n < n:
                _, t_sub, _ = measure(ours_fn, maps[:base_n], masks[:base_n], memory=False)
                sub_value = ours_fn(maps[:base_n], masks[:base_n])
            else:
                t_sub, sub_value = t_full, value
            base_value, t_base, base_mb = measure(
                base_fn,
                maps[:base_n],
                masks[:base_n],
                memory=memory,
                memory_fn=base_memory_fn,
            )
            print(f"  {name}: ours {sub_value!r} baseline {base_value!r} (same {base_n} images)")
        else:
            print(f"  {name}: ours {value!r}")
        rows.append((name, t_full, mb, t_sub, t_base, base_n, base_mb))
        sys.stdout.flush()

    def ranking(m, k):
        return ranking_metrics(m, k)

    run("pixel AUROC+AP+F1-max", ranking, baseline_ranking, sub)
    for metric in ("auroc", "ap", "f1-max"):
        if not args.no_baseline:
            base = baseline_sklearn_single(metric)
            _, t_base, base_mb = measure(base, maps[:sub], masks[:sub], memory=False)
            rows.append((f"  sklearn {metric} alone", np.nan, np.nan, np.nan, t_base, sub, base_mb))
    run(
        "AUPRO zsad",
        aupro_zsad,
        baseline_aupro_zsad,
        zsub,
        base_memory_fn=zsad_loop_memory_run,
    )
    run("AUPRO mvtec", aupro_mvtec, baseline_aupro_mvtec, sub)
    run("pixel_metrics(aupro=zsad)", lambda m, k: pixel_metrics(m, k, "zsad"), None, sub)
    run("pixel_metrics(aupro=mvtec)", lambda m, k: pixel_metrics(m, k, "mvtec"), None, sub)

    value, t_img, mb_img = measure(image_metrics, scores, labels, memory=memory)
    t_img_base = float("nan")
    if not args.no_baseline:
        base_value, t_img_base, _ = measure(baseline_image, scores, labels, memory=False)
        print(f"  image metrics: ours {value} baseline {base_value}")
    rows.append(("image AUROC+AP+F1-max", t_img, mb_img, t_img, t_img_base, n, np.nan))

    # Baseline of the whole pixel set = sklearn trio + the AUPRO baseline, both scaled.
    def scaled(row):
        return row[4] * n / row[5]

    by_name = {r[0]: r for r in rows}
    if not args.no_baseline:
        trio = by_name["pixel AUROC+AP+F1-max"]
        for kind in ("zsad", "mvtec"):
            pro = by_name[f"AUPRO {kind}"]
            row = by_name[f"pixel_metrics(aupro={kind})"]
            total_base = scaled(trio) + scaled(pro)
            rows[rows.index(row)] = (row[0], row[1], row[2], np.nan, total_base, n, np.nan)

    print(
        "\n| metric | ours, all images (s) | ours peak MB | baseline images | baseline (s) "
        "| baseline peak MB | baseline scaled to all (s) | ours on baseline images (s) "
        "| speed-up, same images | speed-up, all images |"
    )
    print("|" + " --- |" * 10)
    for name, t_full, mb, t_sub, t_base, base_n, base_mb in rows:
        base_scaled = t_base * n / base_n if not np.isnan(t_base) else np.nan
        label_n = f"{base_n}" + ("" if base_n == n else " (scaled x%.1f)" % (n / base_n))
        same = t_base / t_sub if not np.isnan(t_sub) and not np.isnan(t_base) else np.nan
        if name.startswith("pixel_metrics"):  # baseline column already holds the scaled sum
            base_scaled, t_base_shown, label_n = t_base, np.nan, "sum of rows above, scaled"
        else:
            t_base_shown = t_base
        full = (
            base_scaled / t_full if not np.isnan(t_full) and not np.isnan(base_scaled) else np.nan
        )
        print(
            f"| {name} | {fmt_s(t_full)} | {fmt_mb(mb)} | {label_n} | {fmt_s(t_base_shown)} "
            f"| {fmt_mb(base_mb)} | {fmt_s(base_scaled)} | {fmt_s(t_sub)} "
            f"| {'-' if np.isnan(same) else f'{same:.1f}x'} "
            f"| {'-' if np.isnan(full) else f'{full:.1f}x'} |"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nprocess max RSS {rss:.0f} MB (includes the data: maps {maps.nbytes / MB:.0f} MB, "
        f"masks {masks.nbytes / MB:.0f} MB); total {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
