"""The page in Debian's Chromium on the tiny model with a token: it asks for the token, then scores
several dropped-in files, one card each, and keeps them in its history."""

import shutil
from pathlib import Path

import httpx
import pytest

from structcore import Detector, DetectorConfig
from structcore.service import background_server, create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TINY = dict(backbone="tiny", resize=64, crop=56, blocks=(-1, -2, -4), projection_dim=32, coreset_ratio=0.25)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): apt-get install -y chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


def test_the_page_asks_for_the_token_and_scores_several_files(browser, synthetic_mvtec, tiny_backbone):
    det = Detector(DetectorConfig(**TINY), precision="fp32", progress=False)
    det.fit("widget", sorted((synthetic_mvtec / "widget" / "train" / "good").glob("*.png")))
    images = [synthetic_mvtec / "widget" / "test" / sub / "000.png" for sub in ("good", "scratch")]
    with background_server(create_app(det, token="s3cret")) as url:
        expected = [httpx.post(f"{url}/v1/predict", headers={"Authorization": "Bearer s3cret"}, timeout=60,
                               files={"file": (p.name, p.read_bytes())}).json() for p in images]
        page = browser.new_page()
        page.goto(url)
        page.locator("#token-form").wait_for(state="visible")
        assert page.locator("#status").inner_text() == "token needed"
        page.fill("#token", "s3cret")
        page.click("#token-form button")
        page.wait_for_function("document.querySelector('#status').textContent === 'ready'")
        assert page.locator("#category option").all_inner_texts() == ["route automatically", "widget"]
        page.set_input_files("#file-input", [str(p) for p in images])
        page.wait_for_function("document.querySelectorAll('.result .decision.accept, .result .decision.reject')"
                               ".length === 2")
        cards = page.locator(".result")  # newest first
        for card, answer in zip([cards.nth(1), cards.nth(0)], expected):
            assert card.locator(".decision").inner_text().lower() == answer["decision"]
            assert float(card.locator(".score-value").get_attribute("data-score")) == answer["score"]
        assert page.locator("#history-rows tr").count() == 2
        page.click(".tab[data-view=model]")
        assert page.locator("#model-categories tr td").first.inner_text() == "widget"
        page.close()
