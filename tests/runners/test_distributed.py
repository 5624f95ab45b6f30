"""``torchrun ... -m tipsomaly eval|predict``: sharded over processes, the same files as one.

The torchrun tests launch real jobs (2 processes, gloo on the CPU) on generated datasets with
the tiny golden model and compare their result files byte for byte with one process's. Faults
are injected by a small wrapper script run in place of ``-m tipsomaly``: after storing its first
part file, the chosen rank exits (status 0, so torchrun lets the others run on), kills itself
(SIGKILL) or hangs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import mvtec_tree, tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.errors import InvalidOptionError
from tipsomaly.runners import distributed
from tipsomaly.runners.distributed import DistInfo, init_if_needed, output_lock, timeout_s
from tipsomaly.runners.lock import LOCK_NAME, OutputLock
from tipsomaly.runners.store import FIELDS, PredictionStore

TORCHRUN = Path(sys.executable).parent / "torchrun"
RESULT_FILES = ("results.json", "results.csv", "results.md")
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")

WRAPPER = """
import os, signal, sys, time
from tipsomaly.runners.store import PredictionStore

RANK = int(os.environ.get("RANK", "0"))
WHAT, _, WHO = os.environ.get("TEST_FAULT", "").partition(":")
_add = PredictionStore.add


def add(self, *args, **kwargs):
    _add(self, *args, **kwargs)
    if WHAT and RANK == int(WHO):
        if WHAT == "exit":
            os._exit(0)
        if WHAT == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if WHAT == "hang":
            time.sleep(3600)


PredictionStore.add = add
from tipsomaly.cli.main import main

sys.exit(main(sys.argv[1:]))
"""


# -- one process: nothing changes ------------------------------------------------------------
@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)


def test_one_process_joins_nothing_and_collectives_are_no_ops(no_torchrun, tmp_path):
    threads = torch.get_num_threads()
    info = init_if_needed("cpu")
    assert info == DistInfo() and not info.active and info.is_main
    assert not torch.distributed.is_initialized()
    assert torch.get_num_threads() == threads
    assert distributed.current() == DistInfo()
    info.barrier("nothing")
    assert info.broadcast({"a": 1}, "x") == {"a": 1}
    assert info.gather(3, "x") == [3] and info.all_gather(3, "x") == [3]
    info.check_same([1, 2], "anything")
    with output_lock(tmp_path / "out"):  # the plain OutputLock
        assert (tmp_path / "out" / LOCK_NAME).is_file()
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_shards_interleave_cover_everything_once_and_balance():
    items = list(range(23))
    for world in (1, 2, 3, 4):
        for offset in (0, 1, 5):
            shards = [DistInfo(r, world).shard(items, offset) for r in range(world)]
            assert sorted(x for s in shards for x in s) == items
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
            assert all(DistInfo(r, world).owns(j, offset) for r, s in enumerate(shards) for j in s)
    # a work list running on over classes (offset = items before): totals stay balanced
    classes, offset, totals = [7, 3, 5, 1, 9], 0, [0, 0, 0]
    for n in classes:
        for r in range(3):
            totals[r] += len(DistInfo(r, 3).shard(range(n), offset))
        offset += n
    assert sum(totals) == sum(classes) and max(totals) - min(totals) <= 1


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.delenv("TIPSOMALY_DIST_TIMEOUT", raising=False)
    assert timeout_s() == distributed.DEFAULT_TIMEOUT_S
    monkeypatch.setenv("TIPSOMALY_DIST_TIMEOUT", "7.5")
    assert timeout_s() == 7.5
    for bad in ("0", "-3", "soon", "inf"):
        monkeypatch.setenv("TIPSOMALY_DIST_TIMEOUT", bad)
        with pytest.raises(InvalidOptionError, match="TIPSOMALY_DIST_TIMEOUT"):
            timeout_s()
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert DistInfo.from_env() == DistInfo(3, 4, 1, 2)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InvalidOptionError, match="RANK=4"):
        DistInfo.from_env()


# -- the store with several writers -----------------------------------------------------------
def _rows(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "label": np.zeros(n, np.int8),
        "has_mask": np.zeros(n, bool),
        "original_hw": np.full((n, 2), 8, np.int32),
        "global_probs_cls1": rng.random((n, 2)).astype(np.float32),
        "global_probs_cls2": rng.random((n, 2)).astype(np.float32),
        "patch_probs": rng.random((n, 4, 2)).astype(np.float32),
        "masks_packed": np.zeros((n, 8), np.uint8),
    }


def _writer(root: str, rank: int, parts: int) -> None:
    store = PredictionStore(root)
    for p in range(parts):
        keys = [(f"k{rank}-{p}-{i}", f"p{rank}-{p}-{i}") for i in range(3)]
        store.add("cls", keys, _rows(3, rank * 1000 + p))
        store.open_class("cls", clean=False)  # reading while the other one writes


def test_concurrent_writers_share_a_class_store(tmp_path):
    """Two processes add parts to one class at once: unique part and temporary names, so
    every row lands, none is damaged, and the reads in between see only whole parts."""
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), r, 25)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = PredictionStore(tmp_path)
    stored = store.open_class("cls")
    assert len(stored) == 2 * 25 * 3
    assert not list((tmp_path / "cls").glob(".*"))  # no temporary file left
    store.finish_class("cls", list(stored.rows))
    assert [p.name for p in (tmp_path / "cls").iterdir()] == ["store.npz"]
    again = store.open_class("cls")
    row = again.rows["k1-24-2"]
    assert np.array_equal(row["patch_probs"], _rows(3, 1024)["patch_probs"][2])
    assert set(row) == {*FIELDS, "pred_key"}


# -- torchrun jobs ------------------------------------------------------------------------------
def with_train(root: Path, n: int, size: int = 48, seed: int = 9) -> Path:
    """Add ``n`` train normal images per class to an :func:`mvtec_tree` (for ``--shots``)."""
    rng = np.random.default_rng(seed)
    meta = json.loads((root / "meta.json").read_text())
    for cls in meta["test"]:
        folder = root / cls / "train" / "good"
        folder.mkdir(parents=True, exist_ok=True)
        meta["train"][cls] = []
        for i in range(n):
            Image.fromarray((rng.random((size, size, 3)) * 80 + 60).astype(np.uint8)).save(
                folder / f"{i:03d}.png"
            )
            meta["train"][cls].append(
                {
                    "img_path": f"{cls}/train/good/{i:03d}.png",
                    "mask_path": "",
                    "cls_name": cls,
                    "specie_name": "good",
                    "anomaly": 0,
                }
            )
    (root / "meta.json").write_text(json.dumps(meta, indent=1))
    return root


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The tiny model, two datasets (odd class sizes: the shares cross classes), the fault
    wrapper, and one process's results as the reference."""
    base = tmp_path_factory.mktemp("dist")
    model = tiny_model_dir(base / "model")
    first = mvtec_tree(base / "mvtec_a", {"bottle": (4, 5), "wood": (2, 3), "cable": (3, 2)})
    second = mvtec_tree(base / "mvtec_b", {"candle": (3, 4)}, seed=3)
    wrapper = base / "wrapper.py"
    wrapper.write_text(WRAPPER)
    args = ["--model", str(model), "--image-size", "56", "--batch-size", "2", "--sigma", "2"]
    eval_args = ["eval", "--data", str(first), str(second), *args]
    reference = base / "one"
    assert main([*eval_args, "--out", str(reference), "-q"]) == 0
    return {"args": args, "eval": eval_args, "wrapper": wrapper, "reference": reference}


def torchrun(
    argv: list[str], *, wrapper: Path | None = None, env: dict | None = None, timeout: float = 300
) -> tuple[subprocess.CompletedProcess, float]:
    """Run a 2-process job on the CPU; returns the finished process and its wall time."""
    target = [str(wrapper)] if wrapper else ["-m", "tipsomaly"]
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *target, *argv]
    environ = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    environ.update(env or {})
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environ)
    return done, time.monotonic() - start


def same_results(out: Path, reference: Path) -> None:
    for name in RESULT_FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_torchrun_eval_writes_the_results_of_one_process(job, tmp_path):
    out = tmp_path / "two"
    done, _ = torchrun([*job["eval"], "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    same_results(out, job["reference"])  # every metric of every class, byte for byte
    # rank 0 writes the report, the one process's to the byte (curves, thumbnails)
    assert (out / "report.html").read_bytes() == (job["reference"] / "report.html").read_bytes()
    assert "shared out" in done.stderr  # rank 0 planned, both computed
    assert done.stdout.count("written:") == 1  # rank 0 alone reports
    results = json.loads((out / "results.json").read_text())
    assert set(results["datasets"]) == {"mvtec_a", "mvtec_b"}


def test_a_rank_that_dies_stops_the_other_which_resumes_alone(job, tmp_path):
    """Rank 1 exits (status 0: torchrun lets rank 0 run on) after its first part: rank 0
    stops at its next wait with a clear message, at once (the closed connection, not the
    timeout); one process then resumes the job to the same results."""
    out = tmp_path / "killed"
    done, seconds = torchrun(
        [*job["eval"], "--out", str(out), "-q"],
        wrapper=job["wrapper"],
        env={"TEST_FAULT": "exit:1", "TIPSOMALY_DIST_TIMEOUT": "120"},
    )
    assert done.returncode != 0
    assert "rank 0 of 2 lost the other processes" in done.stderr
    assert "run the same command again, with any number of processes, to resume" in done.stderr
    assert seconds < 90
    parts = list(out.rglob("part-*.npz"))
    assert parts and not (out / "results.json").exists()
    assert main([*job["eval"], "--out", str(out), "-q"]) == 0
    same_results(out, job["reference"])


def test_a_killed_rank_resumes_with_two_processes(job, tmp_path):
    out = tmp_path / "killed"
    done, _ = torchrun(
        [*job["eval"], "--out", str(out), "-q"],
        wrapper=job["wrapper"],
        env={"TEST_FAULT": "kill:1"},
    )
    assert done.returncode != 0 and not (out / "results.json").exists()
    assert list(out.rglob("part-*.npz"))
    done, _ = torchrun([*job["eval"], "--out", str(out), "-q"])
    assert done.returncode == 0, done.stderr[-2000:]
    same_results(out, job["reference"])


def test_a_hung_rank_times_out(job, tmp_path):
    out = tmp_path / "hung"
    done, seconds = torchrun(
        [*job["eval"], "--out", str(out), "-q"],
        wrapper=job["wrapper"],
        env={"TEST_FAULT": "hang:1", "TIPSOMALY_DIST_TIMEOUT": "4"},
    )
    assert done.returncode != 0
    assert "lost the other processes" in done.stderr
    assert "TIPSOMALY_DIST_TIMEOUT=4 s" in done.stderr
    assert seconds < 90


def test_a_locked_output_folder_stops_every_rank(job, tmp_path):
    out = tmp_path / "busy"
    with OutputLock(out, command="tipsomaly eval (another run)"):
        done, _ = torchrun([*job["eval"], "--out", str(out), "-q"])
    assert done.returncode != 0
    assert "is in use by another tipsomaly run" in done.stderr  # rank 0's own message
    assert "rank 0 could not take the output folder" in done.stderr  # rank 1 stops too
    assert not list(out.rglob("*.npz"))


def test_torchrun_few_shot_eval_writes_the_results_of_one_process(job, tmp_path):
    data = with_train(mvtec_tree(tmp_path / "shots", {"tile": (3, 4), "grid": (2, 3)}, seed=5), 3)
    argv = ["eval", "--data", str(data), *job["args"], "--shots", "2"]
    assert main([*argv, "--out", str(tmp_path / "one"), "-q"]) == 0
    done, _ = torchrun([*argv, "--out", str(tmp_path / "two"), "-q"])
    assert done.returncode == 0, done.stderr[-2000:]
    same_results(tmp_path / "two", tmp_path / "one")


def test_torchrun_predict_writes_the_rows_and_files_of_one_process(job, tmp_path, capsys):
    data = mvtec_tree(tmp_path / "images", {"bottle": (4, 3), "wood": (2, 2)}, seed=7)
    broken = data / "wood" / "test" / "good" / "001.png"
    broken.write_bytes(broken.read_bytes()[:50])  # unreadable: an error row, as with one
    argv = ["predict", str(data), "--class-from-folder", *job["args"], "--save-maps"]
    argv += ["--threshold", "0.5"]
    assert main([*argv, "--out", str(tmp_path / "one"), "-q"]) == 3
    capsys.readouterr()
    done, _ = torchrun([*argv, "--out", str(tmp_path / "two"), "-q"])
    assert done.returncode != 0  # rank 0's status 3 (some failed) is a failure to torchrun
    assert "failed (see the error column of scores.csv)" in done.stdout
    one, two = tmp_path / "one", tmp_path / "two"
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    assert {"scores.csv", "scores.json", "report.html"} <= {str(f) for f in files}
    assert any(str(f).startswith("report-assets/thumbs/") for f in files)  # from both ranks
    for name in files:  # the table in input order, overlays, masks, maps: byte for byte
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    rows = json.loads((two / "scores.json").read_text())["results"]
    assert [r["status"] for r in rows].count("error") == 1
    assert not (two / ".tipsomaly-ranks").exists()
