"""The web page end to end in a real headless Chromium (Debian's chromium + chromium-driver) via Selenium.

Skips without /usr/bin/chromium, except under COGVIEW_REQUIRE_BROWSER=1 (set by .ci/run), where a
missing browser fails the test. Uses the shipped default model: the page as a person sees it.
COGVIEW_SCREENSHOT=PATH keeps the screenshot there (docs/images/server_page.png was made so).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from required import CI

import cogview

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
REQUIRED = os.environ.get("COGVIEW_REQUIRE_BROWSER") == "1" or CI
PROMPT = "蓝色背景上左边有一个红色圆形"  # "a red circle on the left, on a blue background"

if not REQUIRED:  # when required, a missing package is an import error, not a skip
    pytest.importorskip("fastapi", reason="the [server] extra is not installed")
    pytest.importorskip("uvicorn", reason="the [server] extra is not installed")

from server_helpers import PNG_SIGNATURE, decode_png, live_server  # noqa: E402

from cogview.pipeline import CogViewPipeline  # noqa: E402
from cogview.server import create_app  # noqa: E402
from cogview.tokenizers.image import ImageTokenizer  # noqa: E402

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    SELENIUM_ERROR = ""
except ImportError as e:
    SELENIUM_ERROR = f"selenium is not installed ({e.name}); pip install -e '.[dev]'"


@pytest.fixture(scope="module")
def chromium() -> None:
    """Skip without the browser, or fail when COGVIEW_REQUIRE_BROWSER=1 says it must run."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    why = (
        f"no {' or '.join(missing)} (apt-get install chromium chromium-driver)" if missing else SELENIUM_ERROR
    )
    if why and REQUIRED:
        pytest.fail(f"{why}; COGVIEW_REQUIRE_BROWSER=1 requires the browser test to run")
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def url(chromium: None) -> Iterator[str]:
    app = create_app(CogViewPipeline.from_pretrained(), model_name="default")
    try:
        with live_server(app) as base:
            yield base
    finally:
        app.state.scheduler.close()


@pytest.fixture
def browser(chromium: None, tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        # Without these Chromium's own connections get refused on a closed network and stall it.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=980,1100",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]
    for flag in flags:
        options.add_argument(flag)
    # An explicit driver: Selenium Manager must never try to download one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_generate_caption_and_edit_in_the_page(browser: Any, url: str, tmp_path: Path) -> None:
    wait = WebDriverWait(browser, 120)
    browser.get(url + "/")
    wait.until(lambda d: "jobs:" in d.find_element(By.ID, "model").text)

    # An empty prompt shows the server's message in the error area, and no images.
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "prompt" in browser.find_element(By.ID, "error").text

    # "Best of" starts at the model's post-selection default (the shipped model: 4).
    shipped = json.loads((Path(cogview.__file__).parent / "assets/default/pipeline.json").read_text())
    best_of = str(shipped["post_selection"]["candidates"])
    assert browser.find_element(By.ID, "candidates").get_attribute("value") == best_of
    browser.find_element(By.ID, "prompt").send_keys(PROMPT)
    for field, value in (("num-images", "4"), ("seed", "1")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "generate").click()
    # While it draws: a progress bar that moves, and the pictures filling in row by row.
    fast = WebDriverWait(browser, 120, poll_frequency=0.05)
    fast.until(lambda d: float(d.find_element(By.ID, "progress").get_attribute("value") or 0) > 0)
    assert browser.find_element(By.ID, "progress").is_displayed()
    fast.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results img.partial"))
    partial = browser.find_element(By.CSS_SELECTOR, "#results img.partial").get_attribute("src")
    assert decode_png(partial.split(",", 1)[1]).size == (32, 32)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results img:not(.partial)")) == 4)
    assert not browser.find_element(By.ID, "progress").is_displayed()
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert "seed 1" in browser.find_element(By.ID, "summary").text
    score = shipped["post_selection"].get("score", "caption")
    assert f"best of {best_of} by {score} score" in browser.find_element(By.ID, "summary").text
    images = browser.find_elements(By.CSS_SELECTOR, "#results img")
    sources = [im.get_attribute("src") for im in images]
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert all(decode_png(s.split(",", 1)[1]).size == (32, 32) for s in sources)
    assert len(set(sources)) > 1  # four draws, not one image four times
    assert images[0].size["width"] == 128  # shown 4x, without smoothing
    assert images[0].value_of_css_property("image-rendering") == "pixelated"
    captions = [f.text for f in browser.find_elements(By.CSS_SELECTOR, "#results figcaption")]
    assert captions == [f"seed 1 · #{i}" for i in range(1, 5)]

    # The skin-tone picker (the shipped model's modifiers): its phrase joins the prompt.
    assert browser.find_element(By.ID, "tone-label").is_displayed()
    prompt_box = browser.find_element(By.ID, "prompt")
    prompt_box.clear()
    prompt_box.send_keys("亲吻")
    browser.find_element(By.CSS_SELECTOR, "#tone option[value=dark]").click()
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda d: "modifier dark" in d.find_element(By.ID, "summary").text)
    assert "“亲吻 较深肤色”" in browser.find_element(By.ID, "summary").text
    assert "drawn as “亲吻”" in browser.find_element(By.ID, "summary").text
    browser.find_element(By.CSS_SELECTOR, "#tone option[value='']").click()

    # Caption panel: choose the first generated image as a file, caption it in Chinese.
    picture = tmp_path / "generated.png"
    picture.write_bytes(base64.b64decode(sources[0].split(",", 1)[1]))
    browser.find_element(By.ID, "caption-file").send_keys(str(picture))
    browser.find_element(By.CSS_SELECTOR, "#caption-language option[value=zh]").click()
    browser.find_element(By.ID, "caption").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#captions li"))
    caption = browser.find_element(By.CSS_SELECTOR, "#captions li").text
    assert caption and not caption.isascii()

    # Edit panel: the same picture, its top five code rows kept and the rest completed.
    browser.find_element(By.ID, "edit-file").send_keys(str(picture))
    browser.find_element(By.CSS_SELECTOR, "#edit-mode option[value=rows]").click()
    assert not browser.find_element(By.ID, "edit-left").is_displayed()
    assert browser.find_element(By.ID, "edit-rows").is_displayed()
    browser.find_element(By.ID, "edit-prompt").send_keys(PROMPT)
    browser.find_element(By.ID, "edit-seed").send_keys("2")
    browser.find_element(By.ID, "edit").click()
    wait.until(lambda d: d.find_element(By.ID, "edit-output").is_displayed())
    edited = browser.find_element(By.ID, "edit-output").get_attribute("src")
    assert decode_png(edited.split(",", 1)[1]).size == (32, 32)
    g = ImageTokenizer.from_pretrained().grid_size  # the shipped grid: 176/256 on a 16x16 grid
    sampled = f"complete · seed 2 · {(g - 5) * g}/{g * g} codes sampled"
    assert sampled in browser.find_element(By.ID, "edit-summary").text
    assert not browser.find_element(By.ID, "error").is_displayed()

    shot = Path(os.environ.get("COGVIEW_SCREENSHOT") or tmp_path / "server_page.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == PNG_SIGNATURE
