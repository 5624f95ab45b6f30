"""The review view in a real browser: headless Chromium against a real ``serve --db
--keep-images`` server with a token. Open the page, see the recorded decisions with their
images, heat maps and defect boxes, filter to the anomalous ones, mark one as a false alarm with
the reviewer's name, see the mark stored (through the API) and the unreviewed filter drop it.
A screenshot is saved (``$TIPSOMALY_TEST_ARTIFACTS`` or the test's temporary folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("selenium", reason="selenium is not installed (the test extra)")
httpx = pytest.importorskip("httpx")
pytest.importorskip("sqlalchemy")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from serve_helpers import TOKEN, start_server  # noqa: E402

AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOADED = "return arguments[0].complete && arguments[0].naturalWidth > 0;"


@pytest.fixture
def review_server(serve_data, tmp_path):
    server = start_server(
        serve_data, "--db", str(tmp_path / "r.sqlite"), "--keep-images", str(tmp_path / "kept"),
        env={"TIPSOMALY_SERVE_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_review_open_filter_mark(browser, review_server, serve_data, tmp_path):
    url = review_server.url
    answers = []
    for i, path in enumerate(serve_data.images["tile"]):
        headers = {**AUTH, "X-Station-Id": f"cam-{i % 2 + 1}"}
        files = [("file", (path.name, path.read_bytes(), "image/png"))]
        r = httpx.post(url + "/v1/predict", headers=headers, files=files, timeout=60)
        answers.append(r.json()["results"][0])
    flagged = [a for a in answers if a["is_anomalous"]]
    assert flagged and len(flagged) < len(answers)

    wait = WebDriverWait(browser, 30)
    browser.get(url + "/")
    token = wait.until(lambda d: d.find_element(By.ID, "token-field").is_displayed()
                       and d.find_element(By.ID, "token"))  # fmt: skip
    token.send_keys(TOKEN + "\t")
    wait.until(lambda d: d.find_element(By.ID, "review").is_displayed())
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.record[data-state="done"]'))
               == len(answers))  # fmt: skip
    cards = browser.find_elements(By.CSS_SELECTOR, ".record")
    assert [int(c.get_attribute("data-id")) for c in cards] == sorted(
        (a["record_id"] for a in answers), reverse=True
    )
    for card in cards:  # each with its image and heat map loaded
        for img in card.find_elements(By.CSS_SELECTOR, "img.kept, img.heat"):
            wait.until(lambda d, img=img: d.execute_script(LOADED, img))
    by_id = {a["record_id"]: a for a in answers}
    for card in cards:
        a = by_id[int(card.get_attribute("data-id"))]
        boxes = card.find_elements(By.CSS_SELECTOR, "svg.boxes g")
        assert [g.get_attribute("data-bbox") for g in boxes] == [
            ",".join(map(str, d["bbox"])) for d in a["defects"]
        ]
        decision = card.find_element(By.CSS_SELECTOR, ".decision").text
        assert decision.startswith("ANOMALOUS" if a["is_anomalous"] else "normal")
        assert card.find_element(By.CSS_SELECTOR, ".score").text == f"{a['image_score']:.4f}"

    # filter: the anomalous ones only
    Select(browser.find_element(By.ID, "f-outcome")).select_by_value("anomalous")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".record")) == len(flagged))
    shown = {
        int(c.get_attribute("data-id")) for c in browser.find_elements(By.CSS_SELECTOR, ".record")
    }
    assert shown == {a["record_id"] for a in flagged}

    # mark one as a false alarm
    browser.find_element(By.ID, "reviewer").send_keys("Ann Smith")
    card = browser.find_elements(By.CSS_SELECTOR, ".record")[0]
    rid = int(card.get_attribute("data-id"))
    card.find_element(By.CSS_SELECTOR, 'button[data-verdict="false_alarm"]').click()
    wait.until(lambda d: card.get_attribute("data-verdict") == "false_alarm")
    assert card.find_element(By.CSS_SELECTOR, ".verdict").text == "False alarm (normal) — Ann Smith"
    stored = httpx.get(f"{url}/v1/records/{rid}", headers=AUTH, timeout=30).json()
    assert (stored["verdict"], stored["reviewer"]) == ("false_alarm", "Ann Smith")
    monitor = browser.find_element(By.ID, "monitor")
    wait.until(lambda d: "reviewed normal 1, flagged 1" in monitor.text)
    assert monitor.text.startswith("tile (profile v1)")

    folder = Path(os.environ.get("TIPSOMALY_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    Select(browser.find_element(By.ID, "f-outcome")).select_by_value("")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, '.record[data-state="done"]'))
               == len(answers))  # fmt: skip
    for img in browser.find_elements(By.CSS_SELECTOR, ".record img"):
        wait.until(lambda d, img=img: d.execute_script(LOADED, img))
    browser.execute_script("document.getElementById('review').scrollIntoView()")
    shot = folder / "review.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    # unreviewed only: the marked one is gone
    browser.find_element(By.ID, "f-unreviewed").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".record")) == len(answers) - 1)
    assert rid not in {
        int(c.get_attribute("data-id")) for c in browser.find_elements(By.CSS_SELECTOR, ".record")
    }
