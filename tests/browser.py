"""Debian's headless chromium under Selenium 4, for the page tests (upload page, report).

The browser and its driver are the Debian packages (`make test` installs them through
scripts/ensure_chromium.sh); Selenium Manager is never asked for anything, so nothing is downloaded.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1200,900")


@contextmanager
def browser_driver(folder: Path, performance_log: bool = False) -> Iterator[Any]:
    """A chromium WebDriver with its profile in `folder`; the browser console always logged, Chrome's
    network events too when `performance_log`."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        pytest.fail(f"the page test needs {' and '.join(missing)}: run 'make test' (as root it installs the Debian "
                    "packages chromium and chromium-driver) or 'apt-get install chromium chromium-driver'")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def no_selenium_manager(*args: object, **kwargs: object) -> None:
        raise AssertionError("Selenium Manager was called: it would try to download a browser or driver")

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", **({"performance": "ALL"} if performance_log
                                                                       else {})})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(folder / "chromedriver.log"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SeleniumManager, "binary_paths", no_selenium_manager)
        driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()
