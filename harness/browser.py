"""Selenium driving Debian's headless Chromium through Debian's chromedriver (the console's browser tests and
``make screenshots``), importable without pytest.

Both binaries are given to Selenium by path, and Selenium Manager is switched off (``SE_OFFLINE=true``): nothing is
ever downloaded, no driver or browser looked up. The browser runs with the flags of /work/shared/TESTING-INFRA.md
(no background networking, no component updates, no sync, no first run) in a throw-away profile, so it makes no
outside request. chromedriver listens on a loopback port of its own; ``driver.quit()`` stops it and the browser.
"""

from __future__ import annotations

import base64
import os
from typing import Any

BROWSER_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-extensions", "--disable-default-apps", "--metrics-recording-only",
                 "--mute-audio", "--disable-features=MediaRouter,OptimizationHints,Translate")
DESKTOP = (1280, 1000)
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


def start_driver(chromium: str, chromedriver: str, profile: str, log_path: str | None = None) -> Any:
    """A Selenium Chrome session on ``chromium`` through ``chromedriver``, offline, in the profile folder
    ``profile`` (the caller removes it after ``quit()``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # With both paths given Selenium Manager is not consulted; offline it could not fetch anything if it were.
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    service = Service(executable_path=chromedriver, log_output=log_path or os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    return driver


def full_page_png(driver: Any) -> bytes:
    """A PNG of the whole page (beyond the viewport), at the current device metrics."""
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    return base64.b64decode(shot["data"])
