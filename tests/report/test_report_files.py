"""The reports' files without a browser: the outlier rule, what each kind of run writes
(tiled, with an ROI, with a profile), ``--no-report``, a missing matplotlib, a rerun."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib", reason="matplotlib is not installed (the report extra)")

from synthetic import mvtec_tree, tiny_model_dir  # noqa: E402
from tipsomaly.cli.main import main  # noqa: E402
from tipsomaly.report.fit_page import MIN_REFERENCES, reference_outliers, robust_z  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import write_images  # noqa: E402

SIZE = 70


def test_the_outlier_rule_flags_only_a_score_far_above_the_others():
    good = [0.52, 0.518, 0.511, 0.53, 0.525, 0.515, 0.526]
    sources = [f"r{i}.png" for i in range(8)]
    (flagged,) = reference_outliers([*good, 0.603], sources)
    assert (flagged.index, flagged.source) == (7, "r7.png")
    assert flagged.z == pytest.approx(robust_z([*good, 0.603])[7]) and flagged.z > 3.5
    assert flagged.median == pytest.approx(np.median([*good, 0.603]))
    assert "r7.png" in flagged.message("fused") and "look at it" in flagged.message("fused")
    assert reference_outliers([*good, 0.54], sources) == []  # within the spread
    assert reference_outliers([*good, 0.40], sources) == []  # far below: no harm done
    two = reference_outliers([*good[:6], 0.9, 0.7], sources)
    assert [o.index for o in two] == [6, 7]  # highest first
    # near-identical references: the minimum spread keeps tiny differences unflagged
    assert reference_outliers([0.5] * 7 + [0.52], sources) == []
    assert reference_outliers([0.5] * 7 + [0.6], sources)[0].index == 7
    few = [0.5, 0.51, 0.9][: MIN_REFERENCES - 1]
    assert reference_outliers(few, sources) == []  # too few references to say


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("report-files")
    model = tiny_model_dir(root / "model")
    images = write_images(root / "imgs", 4, seed=1) + write_images(root / "bad", 2, 3, defect=True)
    roi = np.zeros((84, 84), np.uint8)
    roi[10:70, 10:74] = 255
    Image.fromarray(roi).save(root / "roi.png")
    base = ["--model", str(model), "--image-size", str(SIZE), "-q"]
    return {"root": root, "images": [str(p) for p in images], "base": base}


def thumbs(out: Path) -> set[str]:
    folder = out / "report-assets" / "thumbs"
    return {p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.jpg")}


def names(out: Path) -> set[str]:
    return {r["name"] for r in csv.DictReader((out / "scores.csv").open(newline=""))}


@pytest.mark.parametrize(
    "extra",
    [["--tile", "48", "--threshold", "0.5"], ["--roi", "ROI", "--no-overlays"], ["--profile"]],
    ids=["tiled", "roi", "profile"],
)
def test_each_kind_of_run_writes_a_report_with_a_thumbnail_per_image(setup, extra, tmp_path):
    root = setup["root"]
    if extra == ["--profile"]:
        profile = tmp_path / "profile"
        argv = ["fit", *setup["images"][:4], "--class-name", "tile", "--out", str(profile)]
        assert main([*argv, *setup["base"]]) == 0
        assert (profile / "report.html").is_file()
        extra = ["--profile", str(profile)]
    extra = [str(root / "roi.png") if x == "ROI" else x for x in extra]
    out = tmp_path / "out"
    argv = ["predict", *setup["images"], "--class-name", "tile", "--out", str(out)]
    assert main([*argv, *setup["base"], *extra]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert thumbs(out) == names(out) and len(names(out)) == 6
    assert (out / "report-assets" / "scores.png").stat().st_size > 5000
    for name in names(out):
        assert f'"n":"{name}"' in page
        with Image.open(out / "report-assets" / "thumbs" / f"{name}.jpg") as im:
            assert im.height <= 128 and im.width > im.height  # image | overlay
    # the cards link the full-size overlays where they were written
    linked = '"overlays":"overlays"' in page and '"o":1' in page and '"o":0' not in page
    assert linked == ("--no-overlays" not in extra)
    assert ('"overlays":null' in page) == ("--no-overlays" in extra)


def test_no_report_writes_none_and_a_rerun_rewrites_it(setup, tmp_path):
    out = tmp_path / "out"
    argv = ["predict", *setup["images"], "--class-name", "tile", "--out", str(out)]
    assert main([*argv, *setup["base"], "--no-report"]) == 0
    assert not (out / "report.html").exists() and not (out / "report-assets").exists()
    assert main([*argv, *setup["base"]]) == 0
    assert main([*argv, *setup["base"], "--no-report"]) == 0  # no stale page left behind
    assert not (out / "report.html").exists()
    assert not list((out / "report-assets" / "thumbs").rglob("*.jpg"))  # of the same names
    assert main([*argv, *setup["base"]]) == 0
    first = (out / "report.html").read_text(encoding="utf-8")
    assert "6 image(s)" in first
    fewer = ["predict", *setup["images"][:3], "--class-name", "tile", "--out", str(out)]
    assert main([*fewer, *setup["base"]]) == 0
    again = (out / "report.html").read_text(encoding="utf-8")
    assert "3 image(s)" in again and again.count('"r":') == 3
    assert not list(out.rglob(".*.tmp*"))  # every file renamed into place


def test_a_missing_matplotlib_is_one_line_naming_the_extra(setup, tmp_path, capsys, monkeypatch):
    """Without the report extra the run still scores everything; one line says why there is
    no report and how to get one (or silence the note)."""
    monkeypatch.setattr("tipsomaly.errors.available", lambda module: module != "matplotlib")
    out = tmp_path / "out"
    argv = ["predict", *setup["images"], "--class-name", "tile", "--out", str(out)]
    assert main([*argv, *setup["base"]]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "report" in line]
    assert len(err) == 1, err
    assert "pip install 'tipsomaly[report]'" in err[0] and "--no-report" in err[0]
    assert len(names(out)) == len(setup["images"])
    assert not (out / "report.html").exists()
    assert main([*argv, *setup["base"], "--no-report"]) == 0
    assert "tipsomaly[report]" not in capsys.readouterr().err


def test_eval_resumed_rewrites_its_report(setup, tmp_path):
    data = mvtec_tree(tmp_path / "mvtec", {"bottle": (3, 2)}, size=48)
    out = tmp_path / "eval"
    argv = ["eval", "--data", str(data), "--out", str(out), *setup["base"]]
    assert main([*argv, "--no-report"]) == 0
    assert not (out / "report.html").exists()
    assert main(argv) == 0  # from the stored predictions: the report is written now
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('class="plot roc"') == 1 and page.count('class="plot pro"') == 1
    assert main([*argv, "--no-report"]) == 0  # results written again: no stale page
    assert not (out / "report.html").exists()
