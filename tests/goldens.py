"""Golden fixture folders: the repository's own (tests/fixtures/golden) + ``TIPSOMALY_GOLDENS``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# The repository's own copy of the public case: a plain clone tests itself.
BUNDLED_ROOT = REPO / "tests" / "fixtures" / "golden"


def golden_dirs() -> list[Path]:
    """Golden folders: the repository's own cases, then any that ``TIPSOMALY_GOLDENS`` adds.

    ``TIPSOMALY_GOLDENS`` holds folders (``:``-separated) with a ``golden.json`` each; a folder
    whose name is already taken (``shared/golden/tips-tiny`` beside the bundled copy) replaces
    the bundled one, so a case is never run twice under one test id.
    """
    dirs = {d.name: d for d in sorted(BUNDLED_ROOT.iterdir()) if (d / "golden.json").is_file()}
    env = os.environ.get("TIPSOMALY_GOLDENS", "").strip()
    if env:
        extra = [Path(p).expanduser().resolve() for p in env.split(os.pathsep) if p.strip()]
        missing = [str(d) for d in extra if not (d / "golden.json").is_file()]
        if missing:
            raise RuntimeError(f"TIPSOMALY_GOLDENS names folders without golden.json: {missing}")
        dirs.update((d.name, d) for d in extra)
    if not dirs:
        raise RuntimeError(f"no folder with a golden.json under {BUNDLED_ROOT}")
    return list(dirs.values())


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
