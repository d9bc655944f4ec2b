"""Headless Debian chromium for browser tests (selenium + /usr/bin/chromedriver).

Usage in a test::

    from browser import chromium
    with chromium() as driver:          # skips (or fails when CI=true) if chromium is missing
        driver.get(path.as_uri())

Nothing is downloaded: selenium is pointed at the system chromium and chromedriver, and
chromium runs with networking, updates and sync disabled in a fresh profile directory.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

CHROMIUM = os.environ.get("WIDTHKIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("WIDTHKIT_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def missing() -> str | None:
    """Why a browser test cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for p in (CHROMIUM, CHROMEDRIVER):
        if not (Path(p).is_file() and os.access(p, os.X_OK)):
            return f"{p} not found (apt-get install chromium chromium-driver)"
    return None


def require_chromium() -> None:
    """Skip the test when chromium is unavailable, except under CI=true where that is a failure."""
    why = missing()
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"browser test needs chromium in CI: {why}")
        pytest.skip(f"browser test skipped: {why}")


@contextlib.contextmanager
def chromium(width: int = 1200, height: int = 900) -> Iterator:
    """A headless chromium WebDriver with a fresh profile; quit and cleaned up afterwards."""
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        opts.add_argument(f)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        driver.set_window_size(width, height)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot_array(driver) -> np.ndarray:
    """The current viewport as an RGB uint8 array."""
    import io

    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))


def hover(driver, element) -> None:
    """Move the mouse onto ``element`` (fires mouseenter/mousemove)."""
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(driver).move_to_element(element).perform()
