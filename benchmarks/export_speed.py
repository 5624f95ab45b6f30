"""Exported graph vs PyTorch: per-image latency of ONNX Runtime and OpenVINO, and their error.

    python benchmarks/export_speed.py              # B/14 at 518 px, batches 1 and 4
    python benchmarks/export_speed.py --quick      # B/14 at 224 px, one timed round (smoke)

A TIPS B/14 with random weights (the preset's shape; nothing downloaded) is exported for one
class with :func:`tipsomaly.deploy.export.export` (ONNX, opset 18, fp32), and the ONNX graph
is converted to OpenVINO IR (fp32, as ``tipsomaly export --format openvino`` does). Each
engine then runs the same preprocessed (B, 3, S, S) batch from images to scores and maps:

* ``pytorch fp32``: the :class:`~tipsomaly.deploy.graph.ExportModule` in eager PyTorch (the
  head the Detector runs), the baseline of the ratios;
* ``onnxruntime fp32``: the exported ``model.onnx`` (CPU execution provider);
* ``openvino fp32``: the IR, ``INFERENCE_PRECISION_HINT=f32``;
* ``openvino fp16-w``: the IR saved with fp16-compressed weights (``compress_to_fp16``,
  OpenVINO's default, which ``export`` turns off), computing in fp32: run for its error
  only, not timed;
* ``openvino bf16``: only on a CPU with bf16 instructions (AVX-512-BF16 / AMX); on AVX2-only
  CPUs OpenVINO would run fp32 anyway, so the row is left out and the reason printed.

Rounds interleave the engines (each round runs every engine once per batch size) and each
figure is the median over rounds, in seconds per image, with the ratio to PyTorch measured in
the same run. Errors are max |engine − PyTorch| over the timed batch, on the image scores
(both CLS) and on the maps. Threads: every engine uses all cores (its default) unless
``--threads``. Export and compile times are printed too.

Runtime: about 4 minutes on a quiet 2-core AVX2 machine (export ~50 s, then 2 timed rounds
of batches 1 and 4); ``--quick`` about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from throughput import make_images, random_model  # noqa: E402

from tipsomaly.data.images import preprocess  # noqa: E402
from tipsomaly.deploy.export import export  # noqa: E402
from tipsomaly.deploy.graph import SCORE_NAMES, ExportModule  # noqa: E402
from tipsomaly.deploy.inferencers import OnnxRunner, OpenVinoRunner  # noqa: E402
from tipsomaly.method.detector import Detector  # noqa: E402
from tipsomaly.tips.runtime import cpu_has_native_bf16  # noqa: E402

CLASS = "screw"
#: engines run for their error only (not timed: it keeps the default run to a few minutes)
UNTIMED = ("openvino fp16-w",)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="b14h", help="TIPS preset whose shape is used")
    p.add_argument("--size", type=int, default=518, help="image side S (default 518)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per engine and batch")
    p.add_argument("--threads", type=int, default=None, help="threads of every engine")
    p.add_argument("--quick", action="store_true", help="224 px, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.rounds = 224, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime
    import openvino as ov

    print(
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"openvino {ov.__version__}; native bf16: {cpu_has_native_bf16()}"
    )
    model = random_model(args.preset)
    detector = Detector(model, image_size=args.size, text_cache=False, batch_size=max(args.batches))
    module = ExportModule.from_detector(detector, CLASS).eval()
    images = make_images(max(args.batches), args.size)
    batch_all = torch.stack([preprocess(im, args.size) for im in images])

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        seconds = timed(lambda: export(detector, CLASS, folder, "onnx"))
        print(f"export {args.preset} at {args.size} px to ONNX: {seconds:.1f} s")
        onnx_path = folder / "model.onnx"
        ir32, ir16 = Path(tmp) / "fp32" / "model.xml", Path(tmp) / "fp16w" / "model.xml"
        start = time.perf_counter()
        converted = ov.convert_model(str(onnx_path))
        ov.save_model(converted, str(ir32), compress_to_fp16=False)
        ov.save_model(converted, str(ir16), compress_to_fp16=True)
        print(
            f"convert to OpenVINO IR (fp32 and fp16 weights): {time.perf_counter() - start:.1f} s"
        )

        engines: dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]] = {}

        def pytorch(x: np.ndarray) -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = module(torch.from_numpy(x))
            return {n: t.numpy() for n, t in zip(module.output_names, out, strict=True)}

        engines["pytorch fp32"] = pytorch
        for name, make in (
            ("onnxruntime fp32", lambda: OnnxRunner(onnx_path, threads=args.threads)),
            ("openvino fp32", lambda: OpenVinoRunner(ir32, threads=args.threads)),
            ("openvino fp16-w", lambda: OpenVinoRunner(ir16, threads=args.threads)),
        ):
            start = time.perf_counter()
            engines[name] = make()
            print(f"{name}: session ready in {time.perf_counter() - start:.1f} s")
        if cpu_has_native_bf16():
            engines["openvino bf16"] = OpenVinoRunner(ir32, threads=args.threads, precision="bf16")
        else:
            print("openvino bf16: skipped, this CPU has no bf16 instructions (OpenVINO runs f32)")

        times: dict[tuple[str, int], list[float]] = {}
        errors: dict[tuple[str, int], tuple[float, float]] = {}
        for b in args.batches:
            x = batch_all[:b].numpy()
            reference = pytorch(x)
            for name, run in engines.items():  # warm-up (first-run allocations) and errors
                out = run(x)
                scores = max(
                    float(np.abs(out[n].astype(np.float64) - reference[n]).max())
                    for n in SCORE_NAMES[:3]
                )
                maps = float(
                    np.abs(out["anomaly_map"].astype(np.float64) - reference["anomaly_map"]).max()
                )
                errors[name, b] = (scores, maps)
        for _ in range(args.rounds):
            for b in args.batches:
                x = batch_all[:b].numpy()
                for name, run in engines.items():
                    if name not in UNTIMED:
                        t = timed(lambda run=run, x=x: run(x)) / b
                        times.setdefault((name, b), []).append(t)

    print(
        f"\n{args.preset} architecture, random weights, {args.size} px, fp32 graph, median of "
        f"{args.rounds} round(s)"
    )
    header = ("engine", "batch", "s/img", "vs torch", "max|dscore|", "max|dmap|")
    print("{:18s} {:>5s} {:>8s} {:>9s} {:>12s} {:>10s}".format(*header))
    for b in args.batches:
        base = statistics.median(times["pytorch fp32", b])
        for name in engines:
            ds, dm = errors[name, b]
            if name in UNTIMED:
                print(f"{name:18s} {b:5d} {'-':>8s} {'-':>9s} {ds:12.2e} {dm:10.2e}")
                continue
            t = statistics.median(times[name, b])
            print(f"{name:18s} {b:5d} {t:8.3f} {base / t:8.2f}x {ds:12.2e} {dm:10.2e}")


if __name__ == "__main__":
    main()
