"""Detector throughput on this machine: fp32 vs bf16, the backbone against the matmul peak.

    python benchmarks/throughput.py                 # B/14 shape, 518 px (--large: and L/14)
    python benchmarks/throughput.py --quick         # B/14, fewer images, engines at 224 px
    python benchmarks/throughput.py --only engines --engine-batches 1 4 --rounds 3
    python benchmarks/throughput.py --only engines --isa avx2   # as an AVX2-only CPU runs it

For each model shape (randomly initialised towers of the real B/14 and L/14 presets) and each
dtype (fp32, bf16), the detector scores generated 518-px images through the public API
(``Detector.predict`` on uint8 arrays: preprocessing, backbone, scores, maps, maps at the
original size). Printed per row:

* seconds per image of the whole pipeline, and the share of it spent in the vision tower;
* the vision tower's achieved GFLOP/s (matmul FLOPs counted from the shapes: patch embedding,
  qkv/proj/FFN linears, QK^T and AV) against the best matmul throughput measured in the same
  run with the same dtype and threads (``F.linear``, the backbone's own call, on its qkv and
  FFN shapes at the benchmark's batch size), as a percentage;
* bf16 vs fp32 agreement on the same images: max |map difference| and the rank correlation
  (Spearman) of the image scores. On a CPU without bf16 instructions the bf16 row (``bf16*``)
  gives these figures only, with bf16 rounding simulated on fp32 kernels (a real emulated run
  would take hours and tipsomaly refuses ``--dtype bf16`` there).

Beside them, the published pipeline (``benchmarks/published_pipeline.py``: the authors'
inference path step by step, fp32, on the same weights and images, checked to give the same
maps) and ``predict`` through the OpenVINO int8 engine (exported and quantized on first use):
seconds per image, and ``predict``'s end-to-end speed-up over the published pipeline in fp32,
bf16 and int8 (``--no-published`` leaves them out).

Then the text side for one class: first run (cache miss: the text tower encodes every prompt
sentence) and second run (a new detector reading the on-disk text cache), and the peak memory
of ``eval``'s metric stage for one class of ``--class-images`` maps (fp32 vs fp16 maps, and
whether fp16 changes the metrics), measured in a subprocess (VmHWM, Linux).

Engines table (between the two): the method for one class exported as in ``tipsomaly export``
(:class:`~tipsomaly.deploy.graph.ExportModule`, images (B, 3, S, S) to scores and maps at S)
run by torch eager fp32, ``torch.compile`` fp32 (inductor, on the vision tower; the head stays
eager; compile time printed apart), ONNX Runtime fp32 and OpenVINO fp32, at batch 1
(``--engine-batches``), in rounds that interleave the engines (the median over ``--rounds``; the
ratio to eager is taken round by round). Per engine: seconds per image of the whole graph and,
for the torch engines, of the vision forward alone; GFLOP/s of the vision matmuls over the
vision time (over the graph time for ORT / OpenVINO, whose graph is one piece) and its share of
the fp32 ``F.linear`` peak measured in each round; max |map| and |score| difference to torch
eager fp32 on the same images. The bf16 engines (torch eager / compile bf16, OpenVINO bf16)
need bf16 matrix instructions; without them they are skipped with the reason printed, and a
``bf16*`` row gives bf16 numerics by simulated rounding. The CPU flags the table relies on are
printed from ``/proc/cpuinfo``, and the load average with the total time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tipsomaly.method.detector import Detector  # noqa: E402
from tipsomaly.method.pixel_prompts import PixelPrompts  # noqa: E402
from tipsomaly.method.text_cache import TextEmbeddingCache  # noqa: E402
from tipsomaly.tips.model import TipsModel  # noqa: E402
from tipsomaly.tips.presets import get_preset  # noqa: E402
from tipsomaly.tips.runtime import cpu_has_native_bf16  # noqa: E402
from tipsomaly.tips.tokenizer import Tokenizer  # noqa: E402

# The repository's own golden fixture: a plain clone runs the benchmark.
TOKENIZER = ROOT / "tests" / "fixtures" / "golden" / "tips-tiny" / "tokenizer.model"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------- model & data
def random_model(preset_name: str, seed: int = 0) -> TipsModel:
    """The preset's towers with random weights (N(0, 0.02) matrices, unit norms)."""
    preset = get_preset(preset_name)
    torch.manual_seed(seed)
    model = TipsModel(
        preset.vision, preset.text, Tokenizer(TOKENIZER), preset.temperature or 0.004, preset.name
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("ln_1.weight") or "ln_" in name:
                continue  # LayerNorms keep weight 1, bias 0
            if name.endswith("gamma"):
                p.fill_(0.1)
            else:
                p.normal_(0.0, 0.02)
    model.eval().requires_grad_(False)
    model.fingerprint = f"random-{preset_name}-seed{seed}"
    return model


def make_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Textured uint8 RGB images; every other one carries a bright and a dark blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = []
    for i in range(n):
        base = 110 + 40 * np.sin(xx / rng.uniform(6, 14)) * np.cos(yy / rng.uniform(6, 14))
        img = np.repeat(base[..., None], 3, 2) + rng.normal(0, 8, (size, size, 3))
        if i % 2:
            margin = min(60, size // 4)  # small sizes (quick runs): blobs scaled down
            for value in (250, 10):
                cy, cx, r = (
                    rng.integers(margin, size - margin),
                    rng.integers(margin, size - margin),
                    rng.integers(min(12, margin // 2), min(40, margin)),
                )
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = value
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images


def backbone_gflop(model: TipsModel, size: int) -> float:
    """Matmul GFLOP of one image through the vision tower (2 FLOPs per multiply-add)."""
    c = model.vision.config
    d, p = c.embed_dim, c.patch_size
    n_patch = (size // p) ** 2
    t = n_patch + 1 + c.num_register_tokens
    hidden = c.mlp_hidden_dim
    ffn = 2 * d * (2 * hidden) + 2 * hidden * d if c.ffn == "swiglu" else 2 * (2 * d * hidden)
    per_token = 2 * d * 3 * d + 2 * d * d + ffn
    attention = 2 * 2 * t * t * d
    patch_embed = 2 * n_patch * 3 * p * p * d
    return (c.depth * (t * per_token + attention) + patch_embed) / 1e9


def matmul_peak(
    dtype: torch.dtype, shapes: list[tuple[int, int, int]], seconds: float = 2.0
) -> float:
    """Best GFLOP/s of ``F.linear`` (the backbone's own matmul) over ``shapes`` (m, k, n):
    an (m, k) input times a (n, k) weight, same dtype and threads as the backbone."""
    best = 0.0
    for m, k, n in shapes:
        x, w = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
        F.linear(x, w)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / len(shapes):
            F.linear(x, w)
            reps += 1
        elapsed = time.perf_counter() - start
        best = max(best, 2 * m * k * n * reps / elapsed / 1e9)
    return best


def int8_matmul_peak(
    shapes: list[tuple[int, int, int]], seconds: float = 1.5, threads: int | None = None
) -> float:
    """Best GOP/s of an int8 matrix product on ``shapes`` (m, k, n) over ONNX Runtime and
    OpenVINO (each a one-MatMul graph with a constant (k, n) weight, statically quantized as
    the int8 engines are); 2 ops per multiply-add, as the fp32 peak counts them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from tipsomaly.deploy.inferencers import open_runner
    from tipsomaly.deploy.quantize import quantize

    best = 0.0
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (m, k, n) in enumerate(shapes):
            w = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
            node = helper.make_node("MatMul", ["images", "w"], ["y"], name=f"mm{i}")
            # the quantizers pick linears inside the transformer blocks by this metadata
            scope = "head.vision.blocks.0: torch.nn.modules.linear.Linear"
            node.metadata_props.add(key="namespace", value=scope)
            graph = helper.make_graph(
                [node],
                "mm",
                [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, m, k])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, m, n])],
                [w],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
            src = Path(tmp) / f"mm{i}.onnx"
            onnx.save(model, str(src))
            x = rng.random((1, m, k), dtype=np.float32)
            for runtime, target in (("onnxruntime", f"q{i}.onnx"), ("openvino", f"q{i}.xml")):
                quantize(runtime, src, Path(tmp) / target, x, "images")
                run = open_runner(Path(tmp) / target, runtime, threads=threads)
                run(x)
                reps, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds / len(shapes) / 2:
                    run(x)
                    reps += 1
                elapsed = time.perf_counter() - start
                best = max(best, 2 * m * k * n * reps / elapsed / 1e9)
    return best


@contextlib.contextmanager
def simulated_bf16(model: TipsModel):
    """bf16 numerics without bf16 kernels: every vision matmul's weights, inputs and outputs
    rounded to bf16, products accumulated in fp32 (what bf16 hardware does). For CPUs that
    only emulate bf16, where running it for real would take hours."""

    def bf16(t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.bfloat16).float()

    saved, handles = {}, []
    for module in model.vision.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            saved[module] = (module.weight.data, module.bias.data)
            module.weight.data, module.bias.data = bf16(module.weight.data), bf16(module.bias.data)
            handles.append(module.register_forward_pre_hook(lambda m, args: (bf16(args[0]),)))
            handles.append(module.register_forward_hook(lambda m, args, out: bf16(out)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for module, (w, b) in saved.items():
            module.weight.data, module.bias.data = w, b


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from tipsomaly.deploy.quantize import spearman as ranked

    rho = ranked(a, b)
    return float("nan") if rho is None else rho


# ------------------------------------------------------------------------------------ stages
def make_detector(model, dtype, size, batch_size) -> Detector:
    """The benchmark's detector: class "object" with learned pixel prompts (random, seed 1)."""
    prompts = PixelPrompts(
        torch.randn(2, 8, model.embed_dim, generator=torch.Generator().manual_seed(1)) * 0.02
    )
    detector = Detector(
        model,
        image_size=size,
        pixel_prompts=prompts,
        dtype=dtype,
        text_cache=False,
        batch_size=batch_size,
    )
    detector.class_text("object")  # text outside the timed region (measured separately)
    detector.pixel_text()
    return detector


def run_detector(model, dtype, images, size, batch_size):
    detector = make_detector(model, dtype, size, batch_size)
    vision = detector.model.vision
    spent = {"backbone": 0.0}
    original = vision.forward

    def timed(x):
        start = time.perf_counter()
        out = original(x)
        spent["backbone"] += time.perf_counter() - start
        return out

    vision.forward = timed
    detector.predict(images[:batch_size], "object")  # warm-up (allocator, kernels)
    spent["backbone"] = 0.0
    start = time.perf_counter()
    preds = detector.predict(images, "object")
    total = time.perf_counter() - start
    vision.forward = original
    maps = np.stack([p.anomaly_map for p in preds])
    scores = np.array([p.image_score for p in preds])
    return total, spent["backbone"], maps, scores


def text_times(model, size):
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for _ in range(2):
            detector = Detector(model, image_size=size, text_cache=TextEmbeddingCache(tmp))
            start = time.perf_counter()
            detector.class_text("metal nut")
            times.append(time.perf_counter() - start)
        return times


MEMORY_SCRIPT = r"""
import json, sys, time
import numpy as np, torch
sys.path.insert(0, {src!r})
from tipsomaly.method.maps import anomaly_maps
from tipsomaly.metrics import pixel_metrics
n, size, grid, dtype = {n}, {size}, {grid}, {dtype!r}
rng = np.random.default_rng(0)
def hwm():  # peak resident set of this process, kB (VmHWM: reset by exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
base = hwm()
patch = torch.from_numpy(rng.random((n, grid * grid, 2), dtype=np.float32))
patch = patch / patch.sum(-1, keepdim=True)
masks = np.zeros((n, size, size), bool)
for i in range(n // 2):
    y, x = rng.integers(0, size - 80, 2)
    masks[i, y:y + 60, x:x + 70] = True
maps = np.empty((n, size, size), np.float16 if dtype == "fp16" else np.float32)
for s in range(0, n, 32):
    maps[s:s + 32] = anomaly_maps(patch[s:s + 32], (grid, grid), (size, size), 4.0).numpy()
start = time.perf_counter()
metrics = pixel_metrics(maps, masks)
elapsed = time.perf_counter() - start
peak = hwm()
print(json.dumps({{"peak_mb": peak / 1024, "base_mb": base / 1024, "metrics": metrics,
                  "seconds": elapsed}}))
"""


def eval_memory(n: int, size: int, grid: int, dtype: str) -> dict:
    code = MEMORY_SCRIPT.format(src=str(ROOT / "src"), n=n, size=size, grid=grid, dtype=dtype)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- engines
#: ``--isa avx2``: the environment that caps oneDNN (torch, OpenVINO's CPU plugin), MKL and
#: ATen's own kernels at AVX2, read when the libraries load (so the process is re-run)
ISA_MARK = "TIPSOMALY_BENCH_ISA"
AVX2_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "ATEN_CPU_CAPABILITY": "avx2",
    ISA_MARK: "avx2",
}
#: /proc/cpuinfo flags the engines table depends on (printed present / absent)
CPU_FLAGS = ("fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
ENGINE_CLASS = "screw"
#: the engines table's rows
ENGINES = (
    "torch eager fp32",
    "torch.compile fp32",
    "onnxruntime fp32",
    "openvino fp32",
    "openvino int8",
    "onnxruntime int8",
    "torch eager bf16",
    "openvino bf16",
)


def bf16_here() -> bool | None:
    """Whether this run has bf16 instructions: the CPU's, unless ``--isa avx2`` capped them."""
    return False if os.environ.get(ISA_MARK) == "avx2" else cpu_has_native_bf16()


def openvino_kernels(runner) -> str:
    """The kernel implementations of a compiled OpenVINO graph's MatMul / FullyConnected
    nodes, counted (their names carry the instruction set: ``brgemm_avx512``, ``jit_avx2``...)."""
    from collections import Counter

    kinds = Counter(
        op.get_rt_info()["primitiveType"].astype(str)
        for op in runner.compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) in ("FullyConnected", "MatMul")
    )
    return ", ".join(f"{k} ×{n}" for k, n in kinds.most_common())


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where unreadable)."""
    flags: set[str] = set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
    return flags


def load_average() -> str:
    with contextlib.suppress(OSError), open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
    return "?"


class TimedVision:
    """Replaces a vision tower's ``forward`` by ``impl`` (eager or compiled) and adds up the
    seconds spent in it; the head around it runs eager."""

    def __init__(self, vision: nn.Module) -> None:
        self.eager = vision.forward
        self.impl = self.eager
        self.seconds = 0.0
        vision.forward = self

    def __call__(self, x: torch.Tensor):
        start = time.perf_counter()
        out = self.impl(x)
        self.seconds += time.perf_counter() - start
        return out


def engines_table(args: argparse.Namespace, preset: str, size: int) -> None:
    """Torch eager / torch.compile / ONNX Runtime / OpenVINO on the same exported method."""
    import onnxruntime
    import openvino as ov

    from tipsomaly.data.images import preprocess
    from tipsomaly.deploy.export import export
    from tipsomaly.deploy.graph import INPUT_NAME, ExportModule
    from tipsomaly.deploy.inferencers import OnnxRunner, OpenVinoRunner, open_runner
    from tipsomaly.deploy.quantize import quantize

    batches = sorted(set(args.engine_batches))
    model = random_model(preset)
    gflop = backbone_gflop(model, size)
    detector = Detector(model, image_size=size, text_cache=False, batch_size=max(batches))
    module = ExportModule.from_detector(detector, ENGINE_CLASS).eval()
    n_check = -(-max(max(batches), args.check_images) // max(batches)) * max(batches)
    inputs = torch.stack([preprocess(im, size) for im in make_images(n_check, size, seed=1)])
    print(
        f"\nengines: {preset} architecture, random weights, {size} px, class {ENGINE_CLASS!r}; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"openvino {ov.__version__}; {gflop:.0f} GFLOP of vision matmuls per image"
    )
    vision = TimedVision(module.head.vision)

    def torch_engine(impl) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        def run(x: np.ndarray) -> dict[str, np.ndarray]:
            vision.impl = impl
            with torch.no_grad():
                out = module(torch.from_numpy(x))
            return {n: t.numpy() for n, t in zip(module.output_names, out, strict=True)}

        return run

    engines: dict[str, Callable[[np.ndarray], dict[str, np.ndarray]]] = {}
    engines["torch eager fp32"] = torch_engine(vision.eager)
    setup: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        start = time.perf_counter()
        export(detector, ENGINE_CLASS, folder, "onnx", check=False)
        setup["export to ONNX"] = time.perf_counter() - start
        start = time.perf_counter()
        ir = Path(tmp) / "ir" / "model.xml"
        ov.save_model(ov.convert_model(str(folder / "model.onnx")), str(ir), compress_to_fp16=False)
        setup["convert to OpenVINO IR"] = time.perf_counter() - start
        start = time.perf_counter()
        engines["onnxruntime fp32"] = OnnxRunner(folder / "model.onnx", threads=args.threads)
        setup["ORT session"] = time.perf_counter() - start
        start = time.perf_counter()
        engines["openvino fp32"] = OpenVinoRunner(ir, threads=args.threads)
        setup["OpenVINO compile_model"] = time.perf_counter() - start
        if bf16_here() and "openvino bf16" in args.engines:  # the fp32 IR, bf16 mode
            engines["openvino bf16"] = OpenVinoRunner(ir, threads=args.threads, precision="bf16")
        # int8: post-training static quantization as `tipsomaly export --precision int8`
        calibration = np.stack(
            [preprocess(im, size).numpy() for im in make_images(args.calibration, size, seed=2)]
        )
        for runtime, target in (("openvino", "ir8/model.xml"), ("onnxruntime", "q8.onnx")):
            if f"{runtime} int8" not in args.engines:
                continue
            graph = Path(tmp) / target
            graph.parent.mkdir(exist_ok=True)
            start = time.perf_counter()
            quantize(runtime, folder / "model.onnx", graph, calibration, INPUT_NAME)
            setup[f"{runtime} int8 quantization"] = time.perf_counter() - start
            engines[f"{runtime} int8"] = open_runner(graph, runtime, threads=args.threads)
    if not args.no_compile:
        compiled = torch.compile(vision.eager, dynamic=False)
        engines["torch.compile fp32"] = torch_engine(compiled)
    else:
        print("torch.compile fp32: skipped (--no-compile)")
    native_bf16 = bf16_here()
    if native_bf16:
        if "torch eager bf16" in args.engines:  # the same weights, matmuls in bf16
            twin = random_model(preset)
            twin_detector = Detector(twin, image_size=size, text_cache=False)
            twin_module = ExportModule.from_detector(twin_detector, ENGINE_CLASS).eval()
            twin_module.head.vision.set_compute_dtype(torch.bfloat16)
            twin_vision = TimedVision(twin_module.head.vision)

            def bf16_run(x: np.ndarray) -> dict[str, np.ndarray]:
                twin_vision.seconds = 0.0
                with torch.no_grad():
                    out = twin_module(torch.from_numpy(x))
                vision.seconds += twin_vision.seconds  # the table reads the vision time there
                return {n: t.numpy() for n, t in zip(module.output_names, out, strict=True)}

            engines["torch eager bf16"] = bf16_run
    elif os.environ.get(ISA_MARK) == "avx2":
        print("skipped: torch eager bf16, OpenVINO bf16 — --isa avx2 caps bf16 away")
    else:
        print(
            "skipped: torch eager bf16, OpenVINO bf16 — this CPU has no bf16 matrix "
            "instructions (no avx512_bf16 / amx_bf16): PyTorch would emulate bf16 far slower "
            "than fp32 and OpenVINO would run f32; bf16 numerics are checked below (bf16*, "
            "simulated rounding), bf16 speed is measured on a CPU that has them"
        )
    engines = {k: v for k, v in engines.items() if k in args.engines or k == "torch eager fp32"}

    # first calls: warm-up and compile times; their outputs on the check images give the errors
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for name, run in engines.items():
        chunks = []
        for b in batches:
            start = time.perf_counter()
            out = run(inputs[:b].numpy())
            if name == "torch.compile fp32":
                setup[f"torch.compile, batch {b} (first call)"] = time.perf_counter() - start
            if b == max(batches):
                chunks.append(out)
        for s in range(max(batches), n_check, max(batches)):
            chunks.append(run(inputs[s : s + max(batches)].numpy()))
        outputs[name] = {
            k: np.concatenate([o[k] for o in chunks]) for k in ("image_score", "anomaly_map")
        }
    print("setup: " + ", ".join(f"{k} {v:.1f} s" for k, v in setup.items()))
    for name, run in engines.items():  # which kernels OpenVINO picked (ISA in their names)
        if isinstance(run, OpenVinoRunner):
            print(f"{name} kernels: {openvino_kernels(run)}")

    # timed rounds: every engine once per batch size per round, the matmul peak in each round
    d, hidden = model.embed_dim, model.vision.config.mlp_hidden_dim
    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": [], "int8": []}
    for r in range(args.rounds):
        for b in batches:
            x = inputs[:b].numpy()
            for name, run in engines.items():
                vision.seconds = 0.0
                start = time.perf_counter()
                run(x)
                graph = time.perf_counter() - start
                times.setdefault((name, b), []).append((graph / b, vision.seconds / b))
        tokens = max(batches) * ((size // 14) ** 2 + 2)
        shapes = [(tokens, d, hidden), (tokens, hidden, d), (tokens, d, 3 * d)]
        peaks["fp32"].append(matmul_peak(torch.float32, shapes, seconds=1.5))
        if native_bf16:
            peaks["bf16"].append(matmul_peak(torch.bfloat16, shapes, seconds=1.5))
        if any(name.endswith("int8") for name in engines):
            peaks["int8"].append(int8_matmul_peak(shapes, threads=args.threads))
        print(f"  round {r + 1}/{args.rounds} done, load average {load_average()}")
    peak = {kind: statistics.median(v) for kind, v in peaks.items() if v}

    if not native_bf16:  # bf16 numerics on this machine: rounding simulated on the eager graph
        with simulated_bf16(model):
            run = torch_engine(vision.eager)
            sim = [
                run(inputs[s : s + max(batches)].numpy()) for s in range(0, n_check, max(batches))
            ]
        outputs["torch eager bf16*"] = {
            k: np.concatenate([o[k] for o in sim]) for k in ("image_score", "anomaly_map")
        }

    ref = outputs["torch eager fp32"]
    shown = "; ".join(
        f"{kind} {v:.0f} (rounds: {', '.join(f'{p:.0f}' for p in peaks[kind])})"
        for kind, v in peak.items()
    )
    print(
        f"\n{preset}, {size} px, median of {args.rounds} interleaved round(s); matmul peaks "
        f"GFLOP/s (GOP/s for int8): {shown}; errors vs torch eager fp32 over {n_check} image(s)"
    )
    print(
        f"{'engine':19s} {'batch':>5s} {'graph s/img':>11s} {'vision s/img':>12s} "
        f"{'GFLOP/s':>8s} {'%peak':>6s} {'vs eager':>13s} {'max|Δmap|':>10s} {'max|Δscore|':>11s} "
        f"{'rank ρ':>7s}"
    )
    for b in batches:
        base = times["torch eager fp32", b]
        for name in [*engines, *(["torch eager bf16*"] if not native_bf16 else [])]:
            out = outputs[name]
            dmap = float(np.abs(out["anomaly_map"] - ref["anomaly_map"]).max())
            dscore = float(np.abs(out["image_score"] - ref["image_score"]).max())
            rho = spearman(out["image_score"], ref["image_score"]) if n_check > 2 else None
            errors = f"{dmap:10.2e} {dscore:11.2e} " + (
                f"{rho:7.4f}" if rho is not None else f"{'–':>7s}"
            )
            if name not in engines:
                print(
                    f"{name:19s} {b:5d} {'–':>11s} {'–':>12s} {'–':>8s} {'–':>6s} {'–':>13s} "
                    f"{errors}"
                )
                continue
            rows = times[name, b]
            graph = statistics.median(g for g, _ in rows)
            vis = statistics.median(v for _, v in rows) if name.startswith("torch") else None
            achieved = gflop / (vis or graph)
            ratios = [bg / g for (bg, _), (g, _) in zip(base, rows, strict=True)]
            ratio = f"{statistics.median(ratios):.2f}x"
            if len(ratios) > 1:
                ratio += f" [{min(ratios):.2f}-{max(ratios):.2f}]"
            mark = "" if vis else "†"
            vis_text = f"{vis:12.3f}" if vis else f"{'–':>12s}"
            own = peak.get(name.split()[-1], peak["fp32"])  # the matching precision's peak
            print(
                f"{name:19s} {b:5d} {graph:11.3f} {vis_text} "
                f"{achieved:7.0f}{mark or ' '} {achieved / own:6.0%} {ratio:>13s} {errors}"
            )
    print(
        "graph s/img: images (B,3,S,S) -> scores and anomaly maps at S (the exported graph; "
        "torch runs the same ExportModule). vision s/img: the vision forward alone (torch "
        "engines; the head around it runs eager). GFLOP/s: vision matmul FLOPs / vision time, "
        "† / whole-graph time (ORT, OpenVINO: a lower bound). vs eager: eager graph time / "
        "engine graph time, median [min-max] of per-round ratios. %peak: of the matmul peak of "
        "the row's precision (fp32 / bf16 F.linear; int8: the best of ONNX Runtime's and "
        "OpenVINO's int8 MatMul on the same shapes). int8: static post-training quantization "
        f"of the vision blocks on {args.calibration} generated calibration images (other "
        "images than the timed and checked ones), as `tipsomaly export --precision int8`."
        + (
            ""
            if native_bf16
            else " bf16*: fp32 kernels with every vision linear's weights, inputs and outputs "
            "rounded to bf16 (attention inner products in fp32)."
        )
    )
    for b in batches:
        eager = statistics.median(g for g, _ in times["torch eager fp32", b])
        best = (
            min((statistics.median(g for g, _ in times[n, b]), n) for n in engines if "int8" in n)
            if any("int8" in n for n in engines)
            else None
        )
        if best is not None:
            print(
                f"batch {b}: fastest int8 engine {best[1]} {eager / best[0]:.2f}x eager fp32 "
                "(goal >= 2x, stretch 3x)"
            )


# -------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["b14h"], help="presets (default b14h; --large adds l14h)"
    )
    parser.add_argument("--large", action="store_true", help="add L/14 (l14h) to every part")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--class-images", type=int, default=1000)
    parser.add_argument(
        "--only",
        choices=["throughput", "memory", "engines"],
        help="run one part of the benchmark",
    )
    parser.add_argument(
        "--engine-batches", type=int, nargs="+", default=[1], help="engines table batch sizes"
    )
    parser.add_argument("--rounds", type=int, default=2, help="engines table timed rounds")
    parser.add_argument(
        "--check-images",
        type=int,
        default=0,
        help="images the engines' errors are taken on (default: the largest batch)",
    )
    parser.add_argument("--threads", type=int, default=None, help="ORT / OpenVINO threads")
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINES,
        default=list(ENGINES),
        help="engines table rows (torch eager fp32, the baseline, always runs); bf16 rows "
        "need bf16 matrix instructions",
    )
    parser.add_argument(
        "--calibration", type=int, default=8, help="int8: generated calibration images"
    )
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    parser.add_argument(
        "--isa",
        choices=["native", "avx2"],
        default="native",
        help="avx2: run as on an AVX2-only CPU (the process is re-run with oneDNN, MKL and "
        "ATen capped at AVX2: torch and OpenVINO obey; ONNX Runtime cannot be capped and its "
        "rows are left out, as are the bf16 rows)",
    )
    parser.add_argument(
        "--no-published",
        action="store_true",
        help="leave out the published pipeline and the int8 predict it is compared with",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="B/14 only, 4 images, 200-map class; engines at 224 px, errors on 4 images",
    )
    args = parser.parse_args()
    if args.isa == "avx2" and os.environ.get(ISA_MARK) != "avx2":
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENV})
    if args.isa == "avx2":
        args.engines = [e for e in args.engines if "onnxruntime" not in e and "bf16" not in e]
        print(
            "instruction set capped at AVX2 ("
            + ", ".join(f"{k}={v}" for k, v in AVX2_ENV.items())
            + f"): torch CPU capability {torch.backends.cpu.get_cpu_capability()}; ONNX Runtime "
            "and bf16 rows left out"
        )
    began = time.perf_counter()
    engine_size = args.size
    if args.quick:
        args.models, args.images, args.batch_size, args.class_images = ["b14h"], 4, 2, 200
        engine_size, args.check_images = 224, 4
    if args.large and "l14h" not in args.models:
        args.models.append("l14h")
    threads = torch.get_num_threads()
    native = bf16_here()
    print(
        f"torch {torch.__version__}, {threads} threads, {args.images} images of {args.size} px, "
        f"batch {args.batch_size}; CPU bf16 instructions: {native}; load average "
        f"{load_average()}"
    )
    flags = cpu_flags()
    print(
        "CPU flags relied on: "
        + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS)
    )
    if native is False and os.environ.get(ISA_MARK) != "avx2":
        print(
            "bf16*: this CPU has no bf16 instructions (PyTorch emulates bf16, far slower than "
            "fp32, and tipsomaly refuses --dtype bf16 here); its row gives bf16 numerics only, "
            "simulated by rounding every vision matmul's weights, inputs and outputs to bf16"
        )
    if args.only in (None, "throughput"):
        print(
            f"{'model':6} {'dtype':5} {'s/img':>7} {'backbone':>9} {'GFLOP/s':>8} {'peak':>7} "
            f"{'%peak':>6} {'max|Δmap|':>10} {'rank ρ':>7}"
        )
    images = make_images(args.images, args.size) if args.only in (None, "throughput") else []
    for name in args.models if args.only in (None, "throughput") else []:
        model = random_model(name)
        gflop = backbone_gflop(model, args.size)
        d = model.embed_dim
        tokens = args.batch_size * ((args.size // 14) ** 2 + 2)
        hidden = model.vision.config.mlp_hidden_dim
        shapes = [(tokens, d, hidden), (tokens, hidden, d), (tokens, d, 3 * d)]
        reference = None
        timings: dict[str, float] = {}
        published = {} if args.no_published else published_part(args, model, images)
        for dtype_name, dtype in DTYPES.items():
            emulated = dtype == torch.bfloat16 and native is False
            if emulated:  # numbers only: bf16 rounding simulated on top of fp32 kernels
                with simulated_bf16(model):
                    total, backbone, maps, scores = run_detector(
                        model, torch.float32, images, args.size, args.batch_size
                    )
                speed = f"{'–':>7} {'–':>9} {'–':>8} {'–':>7} {'–':>6}"
                dtype_name = "bf16*"
            else:
                total, backbone, maps, scores = run_detector(
                    model, dtype, images, args.size, args.batch_size
                )
                peak = matmul_peak(dtype, shapes)
                achieved = gflop * len(images) / backbone
                speed = (
                    f"{total / len(images):7.2f} {backbone / total:9.0%} {achieved:8.0f} "
                    f"{peak:7.0f} {achieved / peak:6.0%}"
                )
            timings[dtype_name] = total
            if reference is None:
                reference, agree = (maps, scores), ("", "")
            else:
                diff = float(np.abs(maps - reference[0]).max())
                agree = (f"{diff:.2e}", f"{spearman(scores, reference[1]):.4f}")
            print(f"{name:6} {dtype_name:5} {speed} {agree[0]:>10} {agree[1]:>7}")
            model.set_compute_dtype(torch.float32)
        if not args.no_published:
            report_published(name, published, reference, timings, len(images))
        first, cached = text_times(model, args.size)
        print(f"{name:6} text for one class: first run {first:.3f} s, cached {cached:.4f} s")
        del model
    for name in args.models if args.only in (None, "engines") else []:
        engines_table(args, name, engine_size)
    if args.only in (None, "memory"):
        memory_part(args)
    print(f"\ntotal {time.perf_counter() - began:.0f} s, load average {load_average()}")


def published_part(args, model, images) -> dict[str, tuple]:
    """The published pipeline and ``predict`` with the OpenVINO int8 engine on ``images``,
    with the model's fp32 weights (run before the bf16 row, which rounds them): name →
    (seconds, maps, scores[, setup seconds])."""
    from published_pipeline import run_published

    detector = make_detector(model, torch.float32, args.size, args.batch_size)
    text, pixel = detector.class_text("object"), detector.pixel_text()
    run_published(model, images[:1], args.size, text, pixel)  # warm-up, as ours
    runs = {"published": run_published(model, images, args.size, text, pixel)}
    int8 = int8_predict_time(model, images, args)
    if int8 is not None:
        runs["openvino int8"] = int8
    return runs


def report_published(name, runs, reference, timings, n) -> None:
    """Print the published pipeline's row and ``predict``'s speed-ups over it."""

    def agreement(run: tuple) -> str:
        diff = float(np.abs(run[1] - reference[0]).max())
        return f"max|Δmap| {diff:.2e}, rank ρ {spearman(run[2], reference[1]):.4f} vs ours fp32"

    seconds = runs["published"][0]
    print(
        f"{name:6} published pipeline (fp32, explicit attention, scipy smoothing per map): "
        f"{seconds / n:.2f} s/img; {agreement(runs['published'])}"
    )
    ratios = {k: seconds / v for k, v in timings.items() if k in DTYPES}
    if "openvino int8" in runs:
        int8 = runs["openvino int8"]
        ratios["openvino int8"] = seconds / int8[0]
        print(
            f"{name:6} openvino int8 predict: {int8[0] / n:.2f} s/img (export and quantization "
            f"{int8[3]:.0f} s, once); {agreement(int8)}"
        )
    print(
        f"{name:6} predict end to end against the published pipeline: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        + " (bf16 goal >= 4x)"
    )


def int8_predict_time(model, images, args) -> tuple[float, np.ndarray, np.ndarray, float] | None:
    """``predict`` through the OpenVINO int8 engine (exported and quantized on 8 generated
    normal images, as ``--engine openvino --precision int8`` does on first use): (seconds for
    ``images``, maps, scores, seconds to export), or None without OpenVINO / NNCF."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("openvino", "nncf", "onnxscript")):
        print("openvino int8 predict: skipped (the openvino extra is not installed)")
        return None
    from tipsomaly.deploy.export import export
    from tipsomaly.deploy.inferencers import ExportedDetector

    detector = make_detector(model, torch.float32, args.size, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, im in enumerate(make_images(2 * args.calibration, args.size, seed=2)[::2]):
            files.append(Path(tmp) / f"normal_{i}.png")  # blob-free images: normal ones
            Image.fromarray(im).save(files[-1])
        start = time.perf_counter()
        export(detector, "object", Path(tmp) / "int8", "openvino", precision="int8",
               calibration=files)  # fmt: skip
        setup = time.perf_counter() - start
        engine = ExportedDetector(Path(tmp) / "int8", batch_size=args.batch_size)
        engine.predict(images[: args.batch_size], "object")  # warm-up (compiles the graph)
        start = time.perf_counter()
        preds = engine.predict(images, "object")
        seconds = time.perf_counter() - start
    maps = np.stack([p.anomaly_map for p in preds])
    return seconds, maps, np.array([p.image_score for p in preds]), setup


def memory_part(args: argparse.Namespace) -> None:
    grid = args.size // 14
    rows = {dt: eval_memory(args.class_images, args.size, grid, dt) for dt in ("fp32", "fp16")}
    delta = max(
        abs(rows["fp32"]["metrics"][k] - rows["fp16"]["metrics"][k])
        for k in rows["fp32"]["metrics"]
    )
    for dt, r in rows.items():
        print(
            f"eval metrics, one class of {args.class_images} maps of {args.size} px, maps in {dt}: "
            f"peak RSS {r['peak_mb']:.0f} MB ({r['peak_mb'] - r['base_mb']:.0f} MB above the "
            f"process after imports), "
            f"{r['seconds']:.1f} s"
        )
    print(f"fp16 vs fp32 maps: max metric difference {delta:.2e}")


if __name__ == "__main__":
    main()
