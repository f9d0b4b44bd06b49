"""The served bottle model with the real DINOv2 weights: API answers equal an offline predict of the same
file, and the page in Debian's Chromium (driven by Playwright, no browser download) shows the decision,
the score and the heatmap. The page's screenshot is kept in tests/artifacts/serve_page.png."""

import shutil
from pathlib import Path

import httpx
import pytest

from structcore import Detector, DetectorConfig, load_model
from structcore.service import background_server, create_app

pytestmark = pytest.mark.real

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run"]


@pytest.fixture(scope="module")
def bottle_model(mvtec_root, tmp_path_factory) -> Path:
    """Bottle fitted on 30 of its train images (every 7th), saved as a model folder."""
    train = sorted((mvtec_root / "bottle" / "train" / "good").glob("*.png"))[::7]
    det = Detector(DetectorConfig(), progress=False)
    det.fit("bottle", train)
    return det.save(tmp_path_factory.mktemp("serve") / "bottle")


@pytest.fixture(scope="module")
def served(bottle_model):
    with background_server(create_app(bottle_model, queue_size=4)) as url:
        with httpx.Client(base_url=url, timeout=120) as client:
            while client.get("/readyz").status_code != 200:
                pass
            yield url, client


def _upload(client, path: Path, **fields):
    response = client.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "image/png")}, data=fields)
    assert response.status_code == 200, response.text
    return response.json()


def test_api_answers_equal_offline_predict(served, bottle_model, mvtec_root):
    _, client = served
    images = [mvtec_root / "bottle" / "test" / sub / "000.png" for sub in ("good", "broken_large")]
    detector = load_model(bottle_model, progress=False)
    offline = [detector.predict([path])[0] for path in images]  # one at a time, as the server scores them
    answers = [_upload(client, path) for path in images]
    for answer, pred in zip(answers, offline):
        assert answer["category"] == pred.category == "bottle"
        assert answer["scores"] == pytest.approx(pred.scores, rel=1e-6, abs=0)
        assert answer["thresholds"] == pred.thresholds
        assert answer["decision"] == pred.decision
    assert answers[1]["decision"] == "reject"


def test_the_page_in_chromium_shows_decision_score_and_heatmap(served, mvtec_root):
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Debian's chromium is not installed ({CHROMIUM}): apt-get install -y chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    url, client = served
    image = mvtec_root / "bottle" / "test" / "broken_large" / "000.png"
    expected = _upload(client, image)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(url)
        page.wait_for_function("document.querySelector('#status').textContent === 'ready'")
        page.set_input_files("#file-input", str(image))
        card = page.locator(".result").first
        card.locator(".decision.reject, .decision.accept").wait_for(timeout=120_000)
        assert card.locator(".decision").inner_text().lower() == expected["decision"]
        assert float(card.locator(".score-value").get_attribute("data-score")) == expected["score"]
        heatmap = card.locator("img.heatmap")
        heatmap.wait_for()
        page.wait_for_function("document.querySelector('.result img.heatmap').complete")
        assert heatmap.evaluate("img => img.naturalWidth") > 0
        page.locator(".tab[data-view=history]").click()
        assert page.locator("#history-rows tr").count() == 1
        page.locator(".tab[data-view=inspect]").click()
        page.screenshot(path=str(ARTIFACTS / "serve_page.png"), full_page=True)
        browser.close()
    print(f"screenshot: {ARTIFACTS / 'serve_page.png'}")
