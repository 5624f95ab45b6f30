"""The page in a real browser: headless Chromium driven by Selenium against a real server.

Enter the token, upload two images of the profile's class, wait for the heat maps, and check
that the scores, decisions and defect records shown are the API's (and so the CLI's) and that
each defect's box is drawn on the heat map; move the display slider. A screenshot is saved as
a test artefact: in ``$TIPSOMALY_TEST_ARTIFACTS`` when set, else in the test's temporary
folder (kept when the test fails).

Needs Debian's ``chromium`` and ``chromium-driver`` (scripts/test.sh installs them where
apt-get is available) and the ``selenium`` package; skipped with the reason otherwise (the
``browser`` fixture of tests/conftest.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

selenium = pytest.importorskip("selenium", reason="selenium is not installed (the test extra)")
httpx = pytest.importorskip("httpx")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from serve_helpers import TOKEN  # noqa: E402

#: an element's box on the screen: [left, top, width, height] in CSS pixels
RECT = "const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width, r.height];"


def test_upload_shows_the_apis_scores_decision_and_heat_map(browser, server, serve_data, tmp_path):
    normal, dented = serve_data.images["tile"][0], serve_data.images["tile"][4]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in (normal, dented)]
    api = httpx.post(server.url + "/v1/predict", files=files, headers=auth, timeout=60).json()
    expected = {r["filename"]: r for r in api["results"]}

    wait = WebDriverWait(browser, 30)
    browser.get(server.url + "/")
    token = wait.until(lambda d: d.find_element(By.ID, "token-field").is_displayed()
                       and d.find_element(By.ID, "token"))  # fmt: skip
    token.send_keys(TOKEN)
    token.send_keys("\t")  # change: the page reads /v1/info with it
    wait.until(lambda d: d.find_element(By.ID, "class-name").get_attribute("value") == "tile")
    assert "profiles: tile" in browser.find_element(By.ID, "server").text
    upload = browser.find_element(By.ID, "files")
    upload.send_keys(f"{normal}\n{dented}")
    browser.find_element(By.ID, "score").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.card[data-state="done"]')) == 2)

    cards = browser.find_elements(By.CSS_SELECTOR, ".card")
    for card in cards:
        name = card.find_element(By.CSS_SELECTOR, ".name").text
        want = expected[name]
        score = card.find_element(By.CSS_SELECTOR, ".score")
        assert score.text == f"{want['image_score']:.6f}"
        assert float(score.get_attribute("data-score")) == want["image_score"]
        assert want["image_score"] == pytest.approx(serve_data.cli[name]["image_score"], abs=1e-6)
        decision = card.find_element(By.CSS_SELECTOR, ".decision").text
        assert decision.startswith("ANOMALOUS" if want["is_anomalous"] else "normal")
        canvas = card.find_element(By.CSS_SELECTOR, "canvas.overlay")
        assert canvas.get_attribute("width") == str(want["size"][1])  # drawn at the image size
        # the profile's pixel threshold applies: its defect records are listed and boxed
        listed = card.find_elements(By.CSS_SELECTOR, "ol.defects li")
        assert [li.get_attribute("data-bbox") for li in listed] == [
            ",".join(map(str, d["bbox"])) for d in want["defects"]
        ]
        for li, d in zip(listed, want["defects"], strict=True):
            assert li.text.startswith(f"#{d['id']}") and f"peak {d['peak']:.3f}" in li.text
        count = card.find_element(By.CSS_SELECTOR, ".defect-count").text
        assert count.startswith(f"{len(want['defects'])} region")
        # each box is drawn over the heat map where its region is
        boxes = card.find_elements(By.CSS_SELECTOR, "svg.boxes g")
        assert [g.get_attribute("data-bbox") for g in boxes] == [
            ",".join(map(str, d["bbox"])) for d in want["defects"]
        ]
        left, top, width, _ = browser.execute_script(RECT, canvas)
        k = (width - 2) / want["size"][1]  # screen pixels per image pixel (1 px border)
        for g, d in zip(boxes, want["defects"], strict=True):
            x, y, w, h = browser.execute_script(RECT, g.find_element(By.CSS_SELECTOR, "rect"))
            x0, y0, x1, y1 = d["bbox"]
            expected_box = (left + 1 + x0 * k, top + 1 + y0 * k, (x1 - x0) * k, (y1 - y0) * k)
            assert (x, y, w, h) == pytest.approx(expected_box, abs=1.5), (name, d)
    assert any(expected[n]["defects"] for n in (normal.name, dented.name))  # a box is listed
    assert [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards] == [
        normal.name,
        dented.name,
    ]  # in upload order
    message = browser.find_element(By.ID, "message")
    assert message.text.startswith("scored in") and message.get_attribute("class") != "error"

    # the display threshold changes what the heat map covers
    area = cards[0].find_element(By.CSS_SELECTOR, ".area")
    before = area.text
    browser.execute_script(
        "const s = document.getElementById('display'); s.value = 0.99;"
        "s.dispatchEvent(new Event('input'));"
    )
    wait.until(lambda d: area.text != before)
    assert browser.find_element(By.ID, "display-value").text == "0.99"
    browser.execute_script(
        "const s = document.getElementById('display'); s.value = 0.3;"
        "s.dispatchEvent(new Event('input'));"
    )

    folder = Path(os.environ.get("TIPSOMALY_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / "serve-page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
