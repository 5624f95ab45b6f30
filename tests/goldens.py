"""Golden fixture folders: ``$TIPSOMALY_GOLDENS``, or every folder of ../shared/golden."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "golden"


def golden_dirs() -> list[Path]:
    """Folders holding ``golden.json``: ``TIPSOMALY_GOLDENS`` (``:``-separated) or the default."""
    env = os.environ.get("TIPSOMALY_GOLDENS", "").strip()
    if env:
        dirs = [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p.strip()]
        missing = [str(d) for d in dirs if not (d / "golden.json").is_file()]
        if missing:
            raise RuntimeError(f"TIPSOMALY_GOLDENS names folders without golden.json: {missing}")
        return dirs
    if not DEFAULT_ROOT.is_dir():
        raise RuntimeError(
            f"no golden fixtures: {DEFAULT_ROOT} does not exist and TIPSOMALY_GOLDENS is unset"
        )
    dirs = sorted(d for d in DEFAULT_ROOT.iterdir() if (d / "golden.json").is_file())
    if not dirs:
        raise RuntimeError(f"no folder with a golden.json under {DEFAULT_ROOT}")
    return dirs


def golden_ids() -> list[str]:
    return [d.name for d in golden_dirs()]


class Golden:
    """One golden case: its configuration, expected arrays and tolerances."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.name = directory.name
        self.config = json.loads((directory / "golden.json").read_text())
        with np.load(directory / "expected.npz", allow_pickle=False) as data:
            self.expected = {k: data[k] for k in data.files}
        self.tol = self.config["tolerances"]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.expected[key]

    def model(self):
        """The case's tiny model, loaded through the same loader as any model directory."""
        if not hasattr(self, "_model"):
            from tipsomaly.tips.model import load_model_dir

            self._model = load_model_dir(self.dir, description="golden.json")
        return self._model
