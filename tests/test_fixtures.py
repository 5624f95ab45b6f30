"""The suite is self-contained: its golden case and reference prompts live in the repository."""

from __future__ import annotations

import os

from goldens import BUNDLED_ROOT, REPO, golden_dirs


def test_golden_cases_need_nothing_beside_the_repository(monkeypatch):
    monkeypatch.delenv("TIPSOMALY_GOLDENS", raising=False)
    dirs = golden_dirs()
    assert dirs, "no bundled golden case"
    for d in dirs:
        assert d.is_relative_to(REPO), f"{d} lies outside the repository"
        assert (d / "golden.json").is_file()


def test_goldens_variable_adds_cases_and_replaces_same_name(monkeypatch, tmp_path):
    extra = tmp_path / "other-case"
    extra.mkdir()
    (extra / "golden.json").write_text("{}")
    same = tmp_path / "tips-tiny"
    same.mkdir()
    (same / "golden.json").write_text("{}")
    monkeypatch.setenv("TIPSOMALY_GOLDENS", os.pathsep.join([str(extra), str(same)]))
    by_name = {d.name: d for d in golden_dirs()}
    assert by_name["other-case"] == extra.resolve()
    assert by_name["tips-tiny"] == same.resolve()
    assert len(by_name) == len(
        {d.name for d in BUNDLED_ROOT.iterdir() if d.is_dir()} | {"other-case"}
    )
