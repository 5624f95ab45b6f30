"""The HTML reports of ``predict``, ``fit`` and ``eval`` in a real browser (headless Chromium).

Each report is written by the real command on the tiny golden model and opened from the file
system: it must load with no console message and no request outside its folder. Predict: the
gallery's order is scores.csv's sorted by score (across pages too), and a filter shows only
its rows. Fit: a defective image planted among good references is named as the outlier, in
the page and on the terminal. Eval: one ROC and one PRO plot per class, drawn. A screenshot of
each goes to ``$TIPSOMALY_TEST_ARTIFACTS`` when set, else the test's temporary folder.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="selenium is not installed (the test extra)")
pytest.importorskip("matplotlib", reason="matplotlib is not installed (the report extra)")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from synthetic import mvtec_tree, tiny_model_dir  # noqa: E402
from tipsomaly.cli.main import main  # noqa: E402
from tipsomaly.report.predict_page import PAGE_SIZE, write_predict_report  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_helpers import write_images  # noqa: E402

SIZE = 70


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two profiles (tile's with a defective reference planted), a predict run of two
    classes against them, an eval run of a two-class dataset."""
    root = tmp_path_factory.mktemp("reports")
    model = tiny_model_dir(root / "model")
    base = ["--model", str(model), "--image-size", str(SIZE), "-q"]
    refs = root / "refs-tile"
    write_images(refs, 7, seed=1)
    planted = write_images(root / "planted", 1, seed=9, defect=True)[0]
    shutil.copy(planted, refs / "zz-planted.png")
    write_images(root / "refs-grid", 6, seed=5)
    for cls in ("tile", "grid"):
        argv = ["fit", str(root / f"refs-{cls}"), "--class-name", cls, "--out", str(root / cls)]
        assert main([*argv, "--false-alarm-rate", "0.2", *base]) == 0
    test = root / "test"
    for cls, seed in (("tile", 2), ("grid", 6)):
        good = write_images(root / "tmp" / cls, 5, seed=seed)
        bad = write_images(root / "tmp" / f"{cls}-bad", 3, seed=seed + 10, defect=True)
        for p in [*good, *bad]:
            (test / cls).mkdir(parents=True, exist_ok=True)
            shutil.move(p, test / cls / p.name)
    argv = ["predict", str(test), "--class-from-folder", "--out", str(root / "pred")]
    assert main([*argv, "--profile", str(root / "tile"), str(root / "grid"), *base]) == 0
    data = mvtec_tree(root / "mvtec", {"bottle": (5, 4), "cable": (4, 3)}, size=56)
    assert main(["eval", "--data", str(data), "--out", str(root / "eval"), *base]) == 0
    return {"root": root, "pred": root / "pred", "fit": root / "tile", "eval": root / "eval"}


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TIPSOMALY_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_report(browser, page: Path) -> None:
    browser.get_log("browser")  # drop what an earlier page logged
    browser.get_log("performance")
    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "[...document.images].every(i => i.loading === 'lazy' || i.complete)"
        )
    )


def requests(browser) -> list[str]:
    """Every URL the page asked for (Chromium's network events)."""
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_clean(browser, folder: Path) -> None:
    """No console message (errors, failed loads, warnings) and no request outside
    ``folder``; every image shown is decoded."""
    logged = browser.get_log("browser")
    assert logged == [], logged
    urls = requests(browser)
    inside = folder.resolve().as_uri() + "/"
    assert urls and all(u.startswith(inside) for u in urls), [
        u for u in urls if not u.startswith(inside)
    ]
    broken = browser.execute_script(
        "return [...document.images].filter(i => i.complete && i.naturalWidth === 0)"
        ".map(i => i.src)"
    )
    assert broken == []


def shoot(browser, path: Path) -> None:
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(height + 120, 3000))
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000


def gallery(browser) -> list[dict[str, str]]:
    return browser.execute_script(
        "return [...document.querySelectorAll('#gallery .card')].map(c => ({name: c.dataset.name,"
        " cls: c.dataset.class, decision: c.dataset.decision}))"
    )


def test_predict_report_gallery_order_filters_and_no_outside_request(browser, runs, tmp_path):
    out = runs["pred"]
    rows = list(csv.DictReader((out / "scores.csv").open(newline="")))
    open_report(browser, out / "report.html")
    assert_clean(browser, out)
    cards = gallery(browser)
    expected = sorted(rows, key=lambda r: -float(r["image_score"]))
    assert [c["name"] for c in cards] == [r["name"] for r in expected]
    for card in cards:  # each card's thumbnail is the one written for it
        assert (out / "report-assets" / "thumbs" / f"{card['name']}.jpg").is_file()
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#gallery .card img')].map(i => i.naturalWidth)"
    )
    assert len(shown) == len(rows) and all(w > 0 for w in shown)
    decisions = {r["name"]: r["is_anomalous"] for r in rows}
    for card in cards:
        assert card["decision"] == ("anomalous" if decisions[card["name"]] == "true" else "normal")
    # each card lists its image's defect records (their boxes are drawn on its thumbnail)
    records = {
        r["name"]: r["defects"] for r in json.loads((out / "scores.json").read_text())["results"]
    }
    listed = browser.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#gallery .card')].map(c =>"
        " [c.dataset.name, [...c.querySelectorAll('ol.defects li')].map(li => li.value)]))"
    )
    assert listed == {name: [d["id"] for d in found] for name, found in records.items()}
    assert any(listed.values())  # some image has a defect
    shoot(browser, artifacts(tmp_path) / "report-predict.png")

    classes = Select(browser.find_element(By.ID, "f-class"))
    classes.select_by_value("grid")
    cards = gallery(browser)
    assert [c["name"] for c in cards] == [r["name"] for r in expected if r["class_name"] == "grid"]
    classes.select_by_value("")
    decision = Select(browser.find_element(By.ID, "f-decision"))
    for value in ("anomalous", "normal"):
        want = [
            r["name"] for r in expected if (r["is_anomalous"] == "true") == (value == "anomalous")
        ]
        if not want:
            continue
        decision.select_by_value(value)
        assert [c["name"] for c in gallery(browser)] == want
    assert browser.get_log("browser") == []


def test_a_large_report_pages_in_score_order(browser, tmp_path):
    """Rows beyond one page: the pages, one after another, hold scores.csv's order; a failed
    image comes last; a filter pages too."""
    n = 2 * PAGE_SIZE + 7
    rows = [
        {"path": f"/x/{i}.png", "class_name": "ab"[i % 2], "image_score": (i * 7919 % n) / n,
         "status": "ok", "error": None, "name": f"img{i:04d}", "is_anomalous": i % 3 == 0}
        for i in range(n)
    ]  # fmt: skip
    rows[5] = {**rows[5], "status": "error", "error": "cannot load", "image_score": float("nan"),
               "is_anomalous": None}  # fmt: skip
    write_predict_report(tmp_path, rows, {"image_threshold": 0.5}, overlays=None)
    open_report(browser, tmp_path / "report.html")
    assert_clean(browser, tmp_path)
    seen = []
    for _ in range(3):
        seen += [c["name"] for c in gallery(browser)]
        browser.find_element(By.ID, "next").click()
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: -r["image_score"])
    assert seen == [r["name"] for r in ok] + ["img0005"]
    assert gallery(browser)[-1]["decision"] == "error"
    assert browser.find_element(By.ID, "next").get_attribute("disabled") is not None
    Select(browser.find_element(By.ID, "f-class")).select_by_value("b")
    assert browser.find_element(By.ID, "page").text.startswith("page 1 of 2")
    assert all(c["cls"] == "b" for c in gallery(browser))


def test_fit_report_names_the_planted_outlier(browser, runs, tmp_path, caplog):
    profile = runs["fit"]
    open_report(browser, profile / "report.html")
    assert_clean(browser, profile)
    warning = browser.find_element(By.ID, "outliers").text
    assert "zz-planted.png" in warning and "1 reference(s)" in warning
    sources = browser.execute_script(
        "return [...document.querySelectorAll('.card')].map(c => c.dataset.source)"
    )
    assert Path(sources[0]).name == "zz-planted.png"  # worst first
    assert len(sources) == 8
    flagged = browser.find_elements(By.CSS_SELECTOR, '.card[data-decision="anomalous"]')
    assert [Path(c.get_attribute("data-source")).name for c in flagged] == ["zz-planted.png"]
    shoot(browser, artifacts(tmp_path) / "report-fit.png")
    # the terminal says it too, and a fit without the planted image names nothing
    refs = runs["root"] / "refs-tile"
    base = ["--model", str(runs["root"] / "model"), "--image-size", str(SIZE), "-q"]
    with caplog.at_level(logging.WARNING, logger="tipsomaly"):
        argv = ["fit", str(refs), "--class-name", "tile", "--out", str(tmp_path / "again")]
        assert main([*argv, "--no-report", *base]) == 0
    named = [r.getMessage() for r in caplog.records if "far above" in r.getMessage()]
    assert len(named) == 1 and "zz-planted.png" in named[0]
    assert not (tmp_path / "again" / "report.html").exists()
    caplog.clear()
    (refs / "zz-planted.png").rename(tmp_path / "planted.png")
    with caplog.at_level(logging.WARNING, logger="tipsomaly"):
        argv = ["fit", str(refs), "--class-name", "tile", "--out", str(tmp_path / "clean")]
        assert main([*argv, *base]) == 0
    assert not [r for r in caplog.records if "far above" in r.getMessage()]
    open_report(browser, tmp_path / "clean" / "report.html")
    assert browser.find_elements(By.ID, "outliers") == []


def test_eval_report_shows_one_roc_and_one_pro_per_class(browser, runs, tmp_path):
    out = runs["eval"]
    open_report(browser, out / "report.html")
    assert_clean(browser, out)
    blocks = browser.find_elements(By.CSS_SELECTOR, ".classblock")
    assert [b.get_attribute("data-class") for b in blocks] == ["bottle", "cable"]
    for block in blocks:
        for kind in ("roc", "pro"):
            plots = block.find_elements(By.CSS_SELECTOR, f"img.{kind}")
            assert len(plots) == 1
            assert browser.execute_script("return arguments[0].naturalWidth", plots[0]) > 300
        cases = block.find_elements(By.CSS_SELECTOR, ".card.case")
        kinds = [c.get_attribute("data-kind") for c in cases]
        assert kinds.count("false positive") == 3 and kinds.count("false negative") == 3
        # the Table-1 row is results.md's
        cells = block.find_elements(By.CSS_SELECTOR, "tbody td")
        name = block.get_attribute("data-class")
        line = next(x for x in (out / "results.md").read_text().splitlines()
                    if x.startswith(f"| {name} |"))  # fmt: skip
        assert [c.text for c in cells] == [x.strip() for x in line.strip("|").split("|")]
    shoot(browser, artifacts(tmp_path) / "report-eval.png")
