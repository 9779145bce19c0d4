"""The leaderboard in a real browser: headless Chromium, opened from file://, sorted by a click.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). The
screenshot lands in ``$HARNESS_SCREENSHOT_DIR`` when set (to look at), else in tmp_path.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_fixtures import build_fixture_store

from harness.report import build_site

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)",
)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic", "--window-size=1280,1400",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def row_order(driver) -> list[str]:
    return [row.get_attribute("data-run-keys") for row in
            driver.find_elements("css selector", "table.leaderboard tbody tr")]


def test_leaderboard_sorts_on_click_from_file_url(tmp_path, browser):
    db = tmp_path / "fixture.duckdb"
    build_fixture_store(db)
    site = tmp_path / "site"
    build_site(db, site, title="browser test")
    pages = sorted(p for p in site.glob("*/*.html") if p.parent.name not in ("runs", "static"))
    assert pages, "no leaderboard page was built"
    page = max(pages, key=lambda p: p.stat().st_size)  # the one with the most rows

    browser.get(page.as_uri())
    assert browser.find_elements("css selector", "table.leaderboard")
    before = row_order(browser)
    assert len(before) >= 3

    headers = browser.find_elements("css selector", "table.leaderboard th[data-col] button")
    changed = None
    for button in headers[1:]:  # the first column is the method's name
        button.click()
        after = row_order(browser)
        if after != before:
            changed = button
            break
    assert changed is not None, "no column click changed the row order"
    header = changed.find_element("xpath", "..")
    assert header.get_attribute("aria-sort") in ("ascending", "descending")
    first_sort = header.get_attribute("aria-sort")
    changed.click()
    assert header.get_attribute("aria-sort") != first_sort
    assert row_order(browser) != after

    # Everything the page loaded came from disk: no network request of any kind.
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(name.startswith("file://") for name in resources), resources

    shots = Path(os.environ.get("HARNESS_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shots / "leaderboard.png"))
    browser.set_window_size(390, 844)
    assert browser.save_screenshot(str(shots / "leaderboard-phone.png"))
