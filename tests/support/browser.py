"""Headless Chromium (Debian's chromium and chromium-driver) driven by selenium.

The browser logs its console and its network requests, so that tests can
assert that a page raised no console error and asked no other host for
anything. Every host but 127.0.0.1 resolves to nothing, so a stray request
fails fast and offline instead of leaving the machine.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
LOCAL_SCHEMES = {"data", "blob", "about", "chrome-error"}


def require_chromium() -> None:
    """Fail (never skip) when the browser is missing: scripts/test.sh installs it."""
    for program in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(program) is None:
            pytest.fail(
                f"{program} is missing: run scripts/test.sh, which installs Debian's "
                "chromium and chromium-driver, or `apt-get install chromium chromium-driver`."
            )


@contextmanager
def chromium(width: int = 1280, height: int = 1400) -> Iterator[webdriver.Chrome]:
    """A headless Chromium that logs console messages and network events."""
    require_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or parts.hostname in LOCAL_HOSTS


def _drain(driver: webdriver.Chrome, kind: str) -> list[dict[str, Any]]:
    """The entries of a browser log since the last read (reading empties it)."""
    entries: list[dict[str, Any]] = driver.get_log(kind)  # type: ignore[no-untyped-call]
    return entries


def requested_urls(driver: webdriver.Chrome) -> list[str]:
    """Every URL the page asked for since the last call (the performance log drains)."""
    urls = []
    for entry in _drain(driver, "performance"):
        message: dict[str, Any] = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(str(message["params"]["request"]["url"]))
    return urls


def resource_urls(driver: webdriver.Chrome) -> list[str]:
    """What the page itself counts as loaded (navigation and resource timing)."""
    names: list[str] = driver.execute_script(
        "return performance.getEntries().map(e => e.name).filter(n => n.includes(':'));"
    )
    return names


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """Console errors since the last call (the browser log drains too)."""
    return [str(e["message"]) for e in _drain(driver, "browser") if e["level"] == "SEVERE"]


def assert_offline_and_clean(driver: webdriver.Chrome) -> list[str]:
    """No request to another host and no console error; returns the URLs requested."""
    urls = requested_urls(driver) + resource_urls(driver)
    foreign = sorted({u for u in urls if not is_local(u)})
    assert not foreign, f"requests to other hosts: {foreign}"
    errors = console_errors(driver)
    assert not errors, f"browser console errors: {errors}"
    return urls
