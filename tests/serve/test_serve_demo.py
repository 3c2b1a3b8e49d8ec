"""The demo page (``GET /demo``) in a real headless Chromium, served by a real ``twotower serve`` on 127.0.0.1.

Needs Debian's ``chromium`` and ``chromium-driver`` (the README's test setup and ``.ci/run`` install them)
and selenium (the ``dev`` extra). The page's list must be the API's answer for the context its controls
set (the page reports the request it sent; the test builds the same body itself and asks the API).
``TWOTOWER_DEMO_SCREENSHOT=docs/demo.png`` keeps the screenshot (docs/demo.png was made so).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from serve_helpers import assert_same_ranking

REF_MONDAY = 1_704_067_200             # the page's reference week: 2024-01-01T00:00:00Z, a Monday
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WAIT_S = 60


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by selenium through Debian's chromedriver (no download of either)."""
    assert CHROMIUM and CHROMEDRIVER, ("the demo test needs Debian's chromium and chromium-driver: "
                                       "apt-get install -y chromium chromium-driver (see the README's test setup)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-gpu", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message=f"waiting for {what}")


def _results(driver, after_seq: int, list_id: str = "results") -> tuple[dict, list[dict]]:
    """Wait until the list has answered a request newer than ``after_seq``; (its attributes, its items)."""
    from selenium.webdriver.common.by import By

    def done(d):
        e = d.find_element(By.ID, list_id)
        seq = int(e.get_attribute("data-seq") or 0) if list_id == "results" else after_seq + 1
        return e if seq > after_seq and e.get_attribute("data-state") in ("ready", "error") else None
    e = _wait(driver, done, f"#{list_id} to answer")
    items = [{"item_id": li.get_attribute("data-item-id"), "score": float(li.get_attribute("data-score")),
              "title": li.find_element(By.TAG_NAME, "button").text} for li in e.find_elements(By.TAG_NAME, "li")]
    attrs = {k: e.get_attribute(f"data-{k}") for k in ("state", "seq", "request", "path", "item-id")}
    return attrs, items


def _set_hour(driver, hour: int) -> tuple[dict, list[dict]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    seq = int(driver.find_element(By.ID, "results").get_attribute("data-seq"))
    Select(driver.find_element(By.ID, "hour")).select_by_value(str(hour))
    return _results(driver, seq)


def _api_items(url: str, path: str, body: dict) -> dict:
    r = requests.post(f"{url}/{path}", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _same(page_items: list[dict], api: dict) -> None:
    assert [it["title"] for it in page_items] == [it["title"] or f"item {it['item_id']}" for it in api["items"]]
    assert_same_ranking({"items": page_items}, [it["item_id"] for it in api["items"]],
                        np.array([it["score"] for it in api["items"]], np.float32))


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_demo_page_shows_the_api_answer_for_the_context_it_sets(ops_app, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url = ops_app.url
    model = requests.get(f"{url}/v1/model", timeout=60).json()
    browser.get(f"{url}/demo")
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")
    controls = {e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, "#context-fields input, "
                                                                     "#context-fields select")}
    assert controls == {f"ctx-{f['name']}" for f in model["context_schema"]}          # every context field
    sample = browser.find_element(By.CSS_SELECTOR, "#samples button:not(.unknown)")
    user = sample.get_attribute("data-user-id")
    sample.click()
    _results(browser, 0)
    recent = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#recent li")]
    want_recent = requests.get(f"{url}/v1/users/{user}", timeout=60).json()["recent_items"]
    assert recent == [it["title"] or f"item {it['item_id']}" for it in want_recent] and recent

    answers = {}
    for hour in (3, 15):
        attrs, items = _set_hour(browser, hour)
        body = {"user_id": user, "k": 10, "context": {"timestamp": REF_MONDAY + hour * 3600}}   # Monday
        assert attrs["state"] == "ready" and json.loads(attrs["request"]) == body
        api = _api_items(url, "v1/recommend", body)
        assert api["path"] == attrs["path"] == "model" and len(items) == 10
        _same(items, api)
        answers[hour] = [it["item_id"] for it in items]
    assert answers[3] != answers[15]          # trilinear: the context changes the ranking
    assert "model" in browser.find_element(By.ID, "path").text

    first = browser.find_element(By.CSS_SELECTOR, "#results li button")
    first_id = first.find_element(By.XPATH, "..").get_attribute("data-item-id")
    first.click()
    _wait(browser, lambda d: d.find_element(By.ID, "similar").get_attribute("data-item-id") == first_id
          and d.find_element(By.ID, "similar").get_attribute("data-state") == "ready", "similar items")
    _, similar = _results(browser, 0, "similar")
    _same(similar, _api_items(url, "v1/similar-items", {"item_id": first_id, "k": 10}))
    assert browser.find_element(By.ID, "error").is_displayed() is False

    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("TWOTOWER_DEMO_SCREENSHOT"):
        shutil.copy(shot, Path(os.environ["TWOTOWER_DEMO_SCREENSHOT"]))


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_demo_page_cold_start_and_readable_errors(ops_app, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    url = ops_app.url
    model = requests.get(f"{url}/v1/model", timeout=60).json()
    browser.get(f"{url}/demo")
    _wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")
    unknown = browser.find_element(By.CSS_SELECTOR, "#samples button.unknown")
    unknown.click()
    attrs, items = _results(browser, 0)
    assert attrs["path"] == "cold_start" and browser.find_element(By.ID, "cold").is_displayed()
    assert browser.find_element(By.ID, "path").text == "cold start: popularity"
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#recent li")] == []
    body = json.loads(attrs["request"])
    _same(items, _api_items(url, "v1/recommend", body))

    feature = next(f for f in model["user_feature_schema"] if f["kind"] == "categorical" and f["values"])
    seq = int(attrs["seq"])
    Select(browser.find_element(By.ID, f"uf-{feature['name']}")).select_by_index(1)       # its first value
    attrs, items = _results(browser, seq)
    body = json.loads(attrs["request"])
    assert body["user_features"] == {feature["name"]: feature["values"][0]}
    assert browser.find_element(By.ID, "path").text == "cold start: user_features"
    _same(items, _api_items(url, "v1/recommend", body))

    numeric = next(f for f in model["context_schema"] if f["kind"] == "numeric")     # an override it refuses
    seq = int(browser.find_element(By.ID, "results").get_attribute("data-seq"))
    browser.find_element(By.ID, f"ctx-{numeric['name']}").send_keys("10000000")
    browser.find_element(By.ID, "k").click()                             # blur: the change event
    attrs, _ = _results(browser, seq)
    error = browser.find_element(By.ID, "error")
    assert attrs["state"] == "error" and error.is_displayed()
    assert "HTTP 422" in error.text and f"context.{numeric['name']}" in error.text, error.text


def test_sample_users_and_recent_items_come_from_the_dataset(trilinear_artifacts):
    from twotower.model.checkpoint import read_checkpoint
    from twotower.serve.demo import sample_users, user_info
    from twotower.serve.loading import load_serving_state

    art = trilinear_artifacts
    state = load_serving_state(read_checkpoint(art.checkpoint), art.dataset)
    counts = {uid: int(state.users.offsets[i + 1] - state.users.offsets[i]) for uid, i in state.users.user_vocab.items()}
    samples = sample_users(state, 5)
    assert len(samples.user_ids) == 5 and samples.unknown_user_id not in counts
    assert samples.user_ids[0] == max(counts, key=lambda u: (counts[u], -state.users.user_vocab[u]))   # most active
    assert [counts[u] for u in samples.user_ids] == sorted((counts[u] for u in samples.user_ids), reverse=True)
    user = samples.user_ids[-1]
    info = user_info(state, user, 4)
    history = state.users.history(state.users.lookup(user))[:4]              # most recent first (the model's)
    assert info.known and info.num_interactions == counts[user]
    assert [it.item_id for it in info.recent_items] == [str(state.catalogue.item_ids[i]) for i in history if i > 0]
    assert info.recent_items[0].title == state.catalogue.title(int(history[0]))
    assert user_info(state, "nobody", 4).model_dump() == {"user_id": "nobody", "known": False, "num_interactions": 0,
                                                          "recent_items": []}
