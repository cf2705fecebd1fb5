"""End to end: `digitlab serve` in a subprocess, the page in Debian's headless Chromium (Selenium +
chromium-driver), a digit drawn with mouse events, the prediction and the ten bars checked."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from conftest import require_binary

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "serve"

pytestmark = pytest.mark.xdist_group("browser")


@pytest.fixture(scope="session")  # once per worker, however xdist orders the modules it is sent
def server(quick_run):
    from digitlab.loadtest import start_server, stop_server

    proc, url = start_server(quick_run, extra=["--workers", "1"])
    yield url
    stop_server(proc)


def _driver(width: int, height: int, mobile: bool = False):
    # Found on PATH; missing ones skip locally and fail under CI=true (apt install chromium chromium-driver).
    chromium, chromedriver = require_binary("chromium"), require_binary("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    if mobile:
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2, "touch": True}})
    # An explicit driver path: selenium-manager never looks for one on the network.
    return webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)


@pytest.fixture(scope="session")  # once per worker, however xdist orders the modules it is sent
def browser():
    driver = _driver(1280, 900)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def _stroke(driver, canvas, points: list[tuple[float, float]]) -> None:
    """Drag the mouse through points given as fractions of the canvas (0..1 from its top left)."""
    from selenium.webdriver.common.action_chains import ActionChains

    w, h = canvas.size["width"], canvas.size["height"]

    def offset(p: tuple[float, float]) -> tuple[int, int]:  # selenium offsets are from the centre
        return round((p[0] - 0.5) * w), round((p[1] - 0.5) * h)

    chain = ActionChains(driver, duration=20)
    chain.move_to_element_with_offset(canvas, *offset(points[0])).click_and_hold()
    for a, b in zip(points, points[1:], strict=False):
        for t in (0.25, 0.5, 0.75, 1.0):
            chain.move_to_element_with_offset(canvas, *offset((a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)))
    chain.release().perform()


def _save(driver, name: str, tmp_path: Path) -> Path:
    time.sleep(0.4)  # let the bars' height transition finish
    path = tmp_path / name
    driver.save_screenshot(str(path))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)
    return path


def test_draw_a_one_and_a_seven(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _wait(browser, lambda d: "parameters" in d.find_element(By.ID, "model").text)
    pad = browser.find_element(By.ID, "pad")

    _stroke(browser, pad, [(0.5, 0.18), (0.5, 0.82)])  # a "1": one vertical stroke
    _wait(browser, lambda d: d.find_element(By.ID, "digit").text == "1")
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert len(bars) == 10
    assert [b.get_attribute("data-class") for b in bars] == [str(i) for i in range(10)]
    top = browser.find_element(By.CSS_SELECTOR, "#bars .bar.best")
    assert top.get_attribute("data-class") == "1"
    heights = [float(b.find_element(By.CSS_SELECTOR, ".fill").value_of_css_property("height")[:-2]) for b in bars]
    assert max(heights) == heights[1] and heights[1] > 5 * sorted(heights)[-2]
    assert "sure" in browser.find_element(By.ID, "confidence").text
    # The 28x28 input the model saw has ink in it.
    ink = browser.execute_script(
        "const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;"
        "let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s;")
    assert ink > 255 * 20
    _save(browser, "draw-1.png", tmp_path)

    browser.find_element(By.ID, "clear").click()
    _wait(browser, lambda d: d.find_element(By.ID, "digit").text == "?")
    assert browser.find_element(By.ID, "undo").get_attribute("disabled")

    _stroke(browser, pad, [(0.22, 0.2), (0.78, 0.2), (0.45, 0.85)])  # a "7": bar, then the diagonal
    _wait(browser, lambda d: d.find_element(By.ID, "digit").text == "7")
    _save(browser, "draw-7.png", tmp_path)

    # Undo takes the stroke away and the page goes back to empty.
    browser.find_element(By.ID, "undo").click()
    _wait(browser, lambda d: d.find_element(By.ID, "digit").text == "?")
    assert browser.find_element(By.ID, "hint").is_displayed()


def test_field_mode_reads_a_row(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _wait(browser, lambda d: "parameters" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "mode-field").click()
    pad = browser.find_element(By.ID, "pad")
    # "1 7 1": strokes in the left, middle and right thirds of the wide field.
    _stroke(browser, pad, [(0.17, 0.2), (0.17, 0.8)])
    _stroke(browser, pad, [(0.4, 0.2), (0.6, 0.2), (0.47, 0.82)])
    _stroke(browser, pad, [(0.83, 0.2), (0.83, 0.8)])
    _wait(browser, lambda d: d.find_element(By.ID, "reading").text.replace("\n", "") == "171")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#field-digits .chip")) == 3
    # Boxes are painted on the overlay canvas.
    painted = browser.execute_script(
        "const c = document.getElementById('overlay'); const d = c.getContext('2d').getImageData(0, 0, c.width,"
        " c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n;")
    assert painted > 100
    _save(browser, "field-171.png", tmp_path)


def test_phone_sized_screen(server, tmp_path):
    from selenium.webdriver.common.by import By

    driver = _driver(390, 844, mobile=True)
    try:
        driver.get(server + "/")
        _wait(driver, lambda d: "parameters" in d.find_element(By.ID, "model").text)
        # Nothing overflows sideways and the pad fills the width.
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 390
        pad = driver.find_element(By.ID, "pad")
        assert pad.size["width"] >= 300
        _stroke(driver, pad, [(0.5, 0.18), (0.5, 0.82)])
        _wait(driver, lambda d: d.find_element(By.ID, "digit").text == "1")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#bars .bar")) == 10
        _save(driver, "phone-390x844.png", tmp_path)
    finally:
        driver.quit()
