"""The run report in a real browser: headless Chromium driven by Selenium opens the file from disk.

Skipped only when Chromium is not installed and ``CI`` is not set; under CI a missing browser fails
(``.ci/run`` installs Debian's ``chromium`` and ``chromium-driver``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    msg = "headless Chromium (Debian packages chromium and chromium-driver) is not installed"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg + " under CI")
    pytest.skip(msg)


def _lookup(result: dict, key: str) -> float:
    value: object = result
    for part in key.split("."):
        value = value[part]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _parse(text: str) -> tuple[float, float]:
    """(value, tolerance) of a number as the page prints it: '41.23%', '1.6543', '12.3' or '10000'."""
    text = text.strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100, 0.5e-4
    decimals = len(text.split(".")[1]) if "." in text else 0
    return float(text), 0.5 * 10 ** -decimals


def test_report_in_headless_chromium(cifar_run: Path, tmp_path: Path) -> None:
    chromium, chromedriver = _browser()
    from selenium import webdriver  # in the test extra
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1800", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=opts)
    try:
        driver.get((cifar_run / "report.html").resolve().as_uri())
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 11  # curves, confusion matrix, gallery, 8 Grad-CAM maps
        widths = [driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in images]
        assert all(w and w > 0 for w in widths), widths

        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert severe == []
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert [u for u in fetched if not u.startswith("data:")] == []  # nothing loaded from anywhere

        result = json.loads((cifar_run / "result.json").read_text())
        shown = driver.find_elements(By.CSS_SELECTOR, "[data-metric]")
        keys = {e.get_attribute("data-metric") for e in shown}
        assert {"test.top1", "test.top5", "test.loss", "test.count", "train_seconds"} <= keys
        for e in shown:
            value, tol = _parse(e.text)
            assert value == pytest.approx(_lookup(result, e.get_attribute("data-metric")), abs=tol), e.text
    finally:
        driver.quit()
