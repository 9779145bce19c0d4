"""The leaderboard in a real browser: headless Chromium, opened from file://, sorted by a click,
scrolled sideways and down with its identity columns and header row staying in view.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). The
screenshots land in ``$HARNESS_SCREENSHOT_DIR`` when set (to look at), else in tmp_path.
"""

from __future__ import annotations

import itertools
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


def widest_page(tmp_path: Path) -> Path:
    """The fixture site's largest leaderboard: the most rows, and a model column."""
    db = tmp_path / "fixture.duckdb"
    build_fixture_store(db)
    site = tmp_path / "site"
    build_site(db, site, title="browser test")
    pages = sorted(p for p in site.glob("*/*.html") if p.parent.name not in ("runs", "static"))
    assert pages, "no leaderboard page was built"
    return max(pages, key=lambda p: p.stat().st_size)


def test_leaderboard_sorts_on_click_from_file_url(tmp_path, browser):
    page = widest_page(tmp_path)

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


# -- sticky identity columns and header ------------------------------------------------------

#: Window sizes: a desktop window narrower than the widest fixture table, and a phone.
STICKY_SIZES = {"desktop": (1024, 768), "phone": (390, 844)}

#: Where things are, in viewport pixels: the table's wrapper, its header cells (the cells
#: stick, not their row), and per body row its identity cells (method, model when shown,
#: params) and its last figure. Also whether each identity cell is opaque, and on top at its
#: centre (what a reader sees there).
GEOMETRY = """
const table = arguments[0], n = arguments[1];
const wrap = table.closest('.table-wrap');
const box = el => { const r = el.getBoundingClientRect();
  return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
const onTop = el => { const r = el.getBoundingClientRect();
  const hit = document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);
  return !!hit && el.contains(hit); };
const opaque = el => { const c = getComputedStyle(el).backgroundColor;
  const m = c.match(/^rgba?\\(([^)]*)\\)$/); if (!m) return false;
  const parts = m[1].split(',');
  return parts.length === 3 || parseFloat(parts[3]) === 1; };
const w = wrap.getBoundingClientRect();
const head = table.tHead.rows[0];
const rows = Array.from(table.tBodies).flatMap(body => Array.from(body.rows));
return {
  wrap: {left: w.left + wrap.clientLeft, top: w.top + wrap.clientTop, height: w.height,
         scrollLeft: wrap.scrollLeft, scrollTop: wrap.scrollTop,
         spareX: wrap.scrollWidth - wrap.clientWidth,
         spareY: wrap.scrollHeight - wrap.clientHeight},
  viewport: {width: innerWidth, height: innerHeight},
  head: (cells => ({top: Math.min(...cells.map(c => c.top)),
                    bottom: Math.max(...cells.map(c => c.bottom))}))(
    Array.from(head.cells).map(box)),
  heads: Array.from(head.cells).slice(0, n).map(box),
  headsOnTop: Array.from(head.cells).slice(0, n).map(onTop),
  lastHeadOnTop: onTop(head.cells[head.cells.length - 1]),
  rows: rows.map(row => ({
    cells: Array.from(row.cells).slice(0, n).map(box),
    opaque: Array.from(row.cells).slice(0, n).map(opaque),
    num: box(Array.from(row.querySelectorAll('td.num')).pop()),
  })),
  firstRowOnTop: Array.from(rows[0].cells).slice(0, n).map(onTop),
  background: getComputedStyle(document.body).backgroundColor,
  cellBackground: getComputedStyle(rows[0].cells[0]).backgroundColor,
};
"""


def identity_columns(driver, table) -> int:
    """How many leading columns name a row: method, model when shown, params."""
    count = driver.execute_script(
        "const cells = Array.from(arguments[0].tBodies[0].rows[0].cells);"
        "return cells.findIndex(c => c.classList.contains('params')) + 1;", table)
    assert count >= 2, "the leaderboard has no params column"
    return count


def scroll_wrap(driver, table, *, left=None, top=None) -> None:
    driver.execute_script(
        "const wrap = arguments[0].closest('.table-wrap');"
        "if (arguments[1] !== null) wrap.scrollLeft = arguments[1];"
        "if (arguments[2] !== null) wrap.scrollTop = arguments[2];", table, left, top)


def near(a: float, b: float, tolerance: float = 1.0) -> bool:
    return abs(a - b) <= tolerance


def check_sideways(driver, table, n: int, stuck: list[int], where: str) -> dict:
    """Scroll the wrapper to its right end: the ``stuck`` columns stay put, the figures move."""
    driver.execute_script("arguments[0].closest('.table-wrap').scrollIntoView()", table)
    scroll_wrap(driver, table, left=0, top=0)
    before = driver.execute_script(GEOMETRY, table, n)
    assert before["wrap"]["spareX"] > 40, f"{where}: the table fits its wrapper: nothing to test"
    scroll_wrap(driver, table, left=10**6)
    after = driver.execute_script(GEOMETRY, table, n)
    moved = after["wrap"]["scrollLeft"]
    assert moved > 40, f"{where}: the wrapper did not scroll sideways"

    for r, (old, new) in enumerate(zip(before["rows"], after["rows"], strict=True)):
        assert near(old["num"]["left"] - new["num"]["left"], moved), (where, r, "figure")
        for c in stuck:
            assert near(new["cells"][c]["left"], old["cells"][c]["left"]), (where, r, c, old, new)
            assert new["opaque"][c], (where, r, c, "a sticky cell lets the figures show through")
        assert near(new["cells"][0]["left"], after["wrap"]["left"]), (where, r, "method")
        for a, b in itertools.pairwise(stuck):
            assert new["cells"][b]["left"] >= new["cells"][a]["right"] - 1, (where, r, a, b)
    for c in stuck:
        assert near(after["heads"][c]["left"], before["heads"][c]["left"]), (where, "head", c)
        assert after["headsOnTop"][c], (where, "head", c, "covered")
        assert after["firstRowOnTop"][c], (where, "row 0", c, "covered by a figure")
    return after


def check_rows_follow_header(driver, table, n: int, stuck: list[int], where: str) -> None:
    """Every row's sticky cells sit under their header cell: offsets right after any sort."""
    now = driver.execute_script(GEOMETRY, table, n)
    for r, row in enumerate(now["rows"]):
        for c in stuck:
            assert near(row["cells"][c]["left"], now["heads"][c]["left"]), (where, r, c)


def check_down(driver, table, n: int, where: str) -> None:
    """Scroll the wrapper down: the header row stays at its top, in view; the rows move."""
    scroll_wrap(driver, table, top=0)
    before = driver.execute_script(GEOMETRY, table, n)
    assert before["wrap"]["spareY"] > 40, f"{where}: the table fits its wrapper's height"
    # the wrapper is no taller than the window: wherever it shows, its header row can too
    assert before["wrap"]["height"] <= before["viewport"]["height"], where
    scroll_wrap(driver, table, top=10**6)
    after = driver.execute_script(GEOMETRY, table, n)
    moved = after["wrap"]["scrollTop"]
    assert moved > 40, f"{where}: the wrapper did not scroll down"
    first_before, first_after = before["rows"][0]["cells"][0], after["rows"][0]["cells"][0]
    assert near(first_before["top"] - first_after["top"], moved), (where, "rows did not move")
    head = after["head"]
    assert near(head["top"], after["wrap"]["top"]), (where, "header left its wrapper's top", head)
    assert head["top"] >= 0 and head["bottom"] <= after["viewport"]["height"], (where, head)
    assert all(after["headsOnTop"]) and after["lastHeadOnTop"], (where, "header covered by rows")


def test_identity_columns_and_header_stay_in_view(tmp_path, browser):
    page = widest_page(tmp_path)
    shots = Path(os.environ.get("HARNESS_SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    for name, (width, height) in STICKY_SIZES.items():
        browser.set_window_size(width, height)
        browser.get(page.as_uri())
        table = browser.find_element("css selector", "table.leaderboard")
        n = identity_columns(browser, table)
        # On a desktop every identity column sticks; on a phone at least method and params
        # (a model column may scroll under the method when the three would not leave room).
        stuck = list(range(n)) if name == "desktop" else [0, n - 1]
        check_sideways(browser, table, n, stuck, name)
        check_rows_follow_header(browser, table, n, stuck, name)

        # sorting moves rows; the sticky cells stay in their columns, in the same places
        before = row_order(browser)
        for button in table.find_elements("css selector", 'th[data-type="num"] button'):
            browser.execute_script("arguments[0].click()", button)
            if row_order(browser) != before:
                break
        assert row_order(browser) != before, f"{name}: no sort changed the row order"
        check_rows_follow_header(browser, table, n, stuck, f"{name}, sorted")
        check_sideways(browser, table, n, stuck, f"{name}, sorted")

        check_down(browser, table, n, name)
        assert browser.save_screenshot(str(shots / f"sticky-{name}.png"))

    # dark theme: the sticky cells take the dark page background, still opaque
    browser.set_window_size(*STICKY_SIZES["desktop"])
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
        "features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    browser.get(page.as_uri())
    table = browser.find_element("css selector", "table.leaderboard")
    n = identity_columns(browser, table)
    after = check_sideways(browser, table, n, list(range(n)), "desktop, dark")
    assert after["cellBackground"] == after["background"] != "rgb(255, 255, 255)", after
    check_down(browser, table, n, "desktop, dark")
    assert browser.save_screenshot(str(shots / "sticky-desktop-dark.png"))
