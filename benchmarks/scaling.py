"""``tipsomaly eval`` on 1 process vs N processes under torchrun: speed-up and where the time goes.

    python benchmarks/scaling.py                      # tiny and random B/14, 1 vs 2 (~3 min)
    python benchmarks/scaling.py --models b14 --image-size 518 --images 8
    python benchmarks/scaling.py --procs 1 2 4        # on a machine with more cores (or GPUs)

For each model — the tiny golden model and a TIPS B/14 with random weights (the real
architecture: 12 blocks, width 768, written once as a model directory) — a generated
MVTec-like dataset is evaluated from scratch with ``python -m tipsomaly eval`` (1 process: all
cores as torch threads) and with ``torchrun --standalone --nproc-per-node N -m tipsomaly eval``
(N processes: cores // N threads each, gloo; with ``--device cuda`` each process takes
``cuda:LOCAL_RANK``). The text embeddings are cached beforehand (as after a first run), so
the runs compare image work. Each job writes to a new folder; its ``results.*`` must equal the
1-process ones byte for byte (``same`` column).

Printed per run: the wall time of the whole command (launcher, imports and teardown
included), the speed-up over 1 process, images per second; then, per rank, where its time
went (seconds, measured inside the process by wrapping tipsomaly's functions):

* ``start``  process launch → tipsomaly's main (torchrun, Python and torch imports)
* ``join``   joining the process group (torch.distributed.init_process_group)
* ``model``  loading the model; ``plan`` rank 0 hashing the images and planning each class
* ``fwd``    the network (Detector.score_batch); ``io`` loading images and storing rows
* ``wait``   waiting for the other ranks (barriers, broadcasts)
* ``final``  rank 0's metrics (maps rebuilt from the stored outputs) and result files
* ``other``  the rest (options, meta.json, hashing images, reading the store, exit)
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = time.time()  # before any heavy import: the worker's start, for the "start" column
ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "tips-tiny"  # the repository's copy
RESULTS = ("results.json", "results.csv", "results.md")
COLUMNS = ("start", "join", "model", "plan", "fwd", "io", "wait", "final", "other")


# ------------------------------------------------------------------------------ the worker
def worker(timings_dir: str, argv: list[str]) -> int:
    """One process of a benchmarked job: tipsomaly's main with its phases timed."""
    from tipsomaly.cli.main import main
    from tipsomaly.method.detector import Detector
    from tipsomaly.report import results
    from tipsomaly.runners import distributed
    from tipsomaly.runners import evaluate as ev
    from tipsomaly.runners.fill import StoreFiller

    spent: dict[str, float] = dict.fromkeys(COLUMNS, 0.0)
    spent["start"] = time.time() - float(os.environ.get("SCALING_LAUNCHED", T0))
    nesting: list[str] = []

    def timed(owner: object, attribute: str, key: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            if nesting:  # count each second once: in the outermost timed phase
                return original(*args, **kwargs)
            nesting.append(key)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
                nesting.pop()

        setattr(owner, attribute, wrapper)

    timed(distributed, "init_if_needed", "join")
    timed(ev.Evaluator, "_build_detector", "model")
    timed(ev.Evaluator, "_plan_shard", "plan")
    timed(Detector, "score_batch", "fwd")
    for name in ("barrier", "broadcast", "all_gather", "gather"):
        timed(distributed.DistInfo, name, "wait")
    timed(ev, "metrics_of", "final")  # the name evaluate calls
    timed(results, "write_results", "final")  # cli.evaluate imports it when it runs
    compute = StoreFiller.compute

    def _compute(self, *args, **kwargs):  # image loading + storing: compute less the phases
        before = sum(spent.values())  # timed inside it (the model's lazy load, forwards)
        start = time.perf_counter()
        try:
            return compute(self, *args, **kwargs)
        finally:
            if not nesting:
                inner = sum(spent.values()) - before
                spent["io"] += time.perf_counter() - start - inner

    StoreFiller.compute = _compute

    def record() -> None:
        spent["total"] = time.time() - float(os.environ.get("SCALING_LAUNCHED", T0))
        spent["other"] = spent["total"] - sum(spent[k] for k in COLUMNS if k != "other")
        rank = os.environ.get("RANK", "0")
        Path(timings_dir, f"rank-{rank}.json").write_text(json.dumps(spent))

    atexit.register(record)
    return main(argv)


# ------------------------------------------------------------------------------ the parent
def tiny_model(dest: Path) -> Path:
    golden = json.loads((GOLDEN / "golden.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("vision.npz", "text.npz", "tokenizer.model"):
        shutil.copy(GOLDEN / name, dest / name)
    (dest / "model.json").write_text(
        json.dumps({"vision": golden["vision"], "text": golden["text"]})
    )
    return dest


def random_b14(dest: Path, seed: int = 0) -> Path:
    """A model directory with TIPS B/14's architecture and random weights (N(0, 0.02)
    matrices, unit LayerNorms, layer scale 0.1), the tiny model's tokenizer."""
    import dataclasses

    import numpy as np
    import torch

    from tipsomaly.tips.model import TipsModel
    from tipsomaly.tips.presets import get_preset
    from tipsomaly.tips.tokenizer import Tokenizer

    if (dest / "model.json").is_file():
        return dest
    preset = get_preset("b14h")
    torch.manual_seed(seed)
    model = TipsModel(
        preset.vision, preset.text, Tokenizer(GOLDEN / "tokenizer.model"), 0.01, "b14-random"
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                continue
            p.fill_(0.1) if name.endswith("gamma") else p.normal_(0.0, 0.02)
    dest.mkdir(parents=True, exist_ok=True)
    np.savez(dest / "vision.npz", **{k: v.numpy() for k, v in model.vision.state_dict().items()})
    text = {k: v.numpy() for k, v in model.text.state_dict().items()}
    np.savez(dest / "text.npz", temperature=np.float32(0.01), **text)
    shutil.copy(GOLDEN / "tokenizer.model", dest / "tokenizer.model")
    description = {
        "vision": dataclasses.asdict(preset.vision),
        "text": dataclasses.asdict(preset.text),
    }
    (dest / "model.json").write_text(json.dumps(description, indent=1))
    return dest


def dataset(root: Path, classes: list[str], n: int, size: int = 256, seed: int = 0) -> Path:
    """An MVTec-like tree with ``meta.json``: per class ``n`` test images, half anomalous."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    meta: dict = {"train": {c: [] for c in classes}, "test": {}}
    for cls in classes:
        meta["test"][cls] = []
        for i in range(n):
            kind = "bad" if i % 2 else "good"
            image = (rng.random((size, size, 3)) * 80 + 60).astype(np.uint8)
            entry = {
                "img_path": f"{cls}/test/{kind}/{i:03d}.png",
                "mask_path": "",
                "cls_name": cls,
                "specie_name": kind,
                "anomaly": int(kind == "bad"),
            }
            if kind == "bad":
                mask = np.zeros((size, size), np.uint8)
                y, x = rng.integers(0, size - size // 5, 2)
                mask[y : y + size // 5, x : x + size // 5] = 255
                image[mask > 0] = 240
                (root / cls / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / cls / "ground_truth" / kind / f"{i:03d}_mask.png")
                entry["mask_path"] = f"{cls}/ground_truth/{kind}/{i:03d}_mask.png"
            (root / cls / "test" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / entry["img_path"])
            meta["test"][cls].append(entry)
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def run_job(procs: int, eval_args: list[str], out: Path, timings: Path, env: dict) -> float:
    """One timed job; returns its wall time (the per-rank timings land in ``timings``)."""
    timings.mkdir(parents=True, exist_ok=True)
    me = [str(Path(__file__).resolve()), "--worker", str(timings), "eval", *eval_args]
    if procs == 1:
        command = [sys.executable, *me]
    else:
        torchrun = Path(sys.executable).parent / "torchrun"
        command = [str(torchrun), "--standalone", "--nproc-per-node", str(procs), *me]
    start = time.time()
    done = subprocess.run(
        [*command, "--out", str(out), "-q"],
        env={**env, "SCALING_LAUNCHED": repr(start)},
        capture_output=True,
        text=True,
    )
    wall = time.time() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "b14"], choices=["tiny", "b14"])
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--classes", type=int, default=3, help="classes per dataset")
    parser.add_argument("--images", type=int, help="images per class (tiny 40, b14 8)")
    parser.add_argument("--image-size", type=int, help="model input size (tiny 70, b14 224)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting (best shown)")
    parser.add_argument("--work", help="working folder (default: a temporary one, removed)")
    args = parser.parse_args()
    if 1 not in args.procs:
        args.procs = [1, *args.procs]

    work = Path(args.work or tempfile.mkdtemp(prefix="tipsomaly-scaling-"))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["TIPSOMALY_HOME"] = str(work / "home")  # its own text cache, warmed below
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    try:
        print(f"machine: {os.cpu_count()} cores; torch threads = cores // processes")
        for name in args.models:
            images = args.images or {"tiny": 40, "b14": 8}[name]
            size = args.image_size or {"tiny": 70, "b14": 224}[name]
            model = tiny_model(work / "tiny") if name == "tiny" else random_b14(work / "b14")
            classes = [f"class{c}" for c in range(args.classes)]
            data = dataset(work / f"data-{name}-{images}", classes, images)
            warm = dataset(work / f"warm-{name}", classes, 1, seed=1)
            common = ["--model", str(model), "--image-size", str(size), "--device", args.device]
            common += ["--batch-size", str(args.batch_size)]
            run_job(1, ["--data", str(warm), *common], work / f"warm-out-{name}", work / "t", env)
            n = len(classes) * images
            print(f"\n{name}: {n} images of {size} px, batch {args.batch_size}, {args.device}")
            header = f"{'procs':>5} {'wall s':>7} {'(runs)':>13} {'speed-up':>8} {'img/s':>6} "
            print(header + f"{'same':>5}  rank" + "".join(f"{c:>7}" for c in COLUMNS))
            runs: dict[int, list[tuple[float, list[dict]]]] = {p: [] for p in args.procs}
            reference = None
            same = True
            for _ in range(args.repeat):  # interleaved, so a busy spell hits every setting
                for procs in args.procs:
                    out, timings = work / f"out-{name}-{procs}", work / f"timings-{name}-{procs}"
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.rmtree(timings, ignore_errors=True)
                    wall = run_job(procs, ["--data", str(data), *common], out, timings, env)
                    files = [(out / f).read_bytes() for f in RESULTS]
                    reference = reference or files
                    same = same and files == reference
                    spent = [
                        json.loads((timings / f"rank-{r}.json").read_text()) for r in range(procs)
                    ]
                    runs[procs].append((wall, spent))
            base = min(w for w, _ in runs[1])
            for procs in args.procs:
                wall, spent = min(runs[procs], key=lambda run: run[0])
                all_walls = "/".join(f"{w:.1f}" for w, _ in runs[procs])
                for rank, timing in enumerate(spent):
                    lead = (
                        f"{procs:>5} {wall:>7.1f} {'(' + all_walls + ')':>13} "
                        f"{base / wall:>7.2f}x {n / wall:>6.1f} {'yes' if same else 'NO':>5}"
                        if rank == 0
                        else " " * 48
                    )
                    print(f"{lead}  {rank:>4}" + "".join(f"{timing[c]:>7.1f}" for c in COLUMNS))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
