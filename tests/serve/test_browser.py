"""The web page in a real browser: headless Chromium driven by Playwright,
at a desktop size and at 390 px, by mouse and by keyboard alone, with an
accessibility check (axe-core) and every failure the server can give.

Skips cleanly where no Chromium is installed (Debian's ``chromium``
package; ``.ci/run`` installs it) or where axe-core was not fetched
(``.ci/run`` puts it in ``.ragged/axe``; by hand: ``npm pack axe-core``
there and unpack it). ``RAGGED_SCREENSHOT_DIR`` keeps the screenshots
(docs/images/serve-*.png come from here).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.inputs import EXAMPLES
from tests.serve.conftest import Server, build_index

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
AXE = Path(os.environ.get("RAGGED_AXE_JS") or Path(__file__).parents[2] / ".ragged" / "axe" / "package" / "axe.min.js")
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
ERROR_RED = "rgb(180, 35, 24)"


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    if CHROMIUM is None:
        pytest.skip("no Chromium here (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("RAGGED_SCREENSHOT_DIR") or tmp_path)


def until(page: Any, expression: str, timeout: float = 60) -> None:
    """Wait until ``expression`` is true in the page. Polled from here, not
    with wait_for_function: that evaluates a string inside the page, which the
    server's Content-Security-Policy forbids (as it should)."""
    end = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < end, f"timed out waiting for {expression}"
        time.sleep(0.1)


def opened(browser: Any, url: str, viewport: dict[str, int], bypass_csp: bool = False) -> Any:
    """A page at ``url``; ``bypass_csp`` only where a test injects a script of
    its own (axe-core), which the server's Content-Security-Policy rightly refuses."""
    page = browser.new_page(viewport=viewport, bypass_csp=bypass_csp)
    blocked: list[str] = []  # the page's own script and style must run under its Content-Security-Policy
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.csp_blocked = blocked
    page.goto(url, wait_until="domcontentloaded")
    until(page, "/ pages?, /.test(document.getElementById('status').textContent)", 60)
    return page


def searched(page: Any, query: str, mode: str = "auto") -> None:
    page.select_option("#mode", mode)
    page.fill("#query", query)
    page.press("#query", "Enter")
    until(page, "document.getElementById('summary').textContent.includes(' pages in ')", 60)


def thumbnails_loaded(page: Any) -> None:
    until(page, "[...document.querySelectorAll('.hit .thumb')].every(t => "
                           "t.querySelector('.why') || (t.querySelector('img') && t.querySelector('img').complete "
                           "&& t.querySelector('img').naturalWidth > 0))", 60)


def large_loaded(page: Any) -> None:
    until(page, "document.getElementById('page-error').textContent || "
                           "(document.getElementById('large').complete && "
                           "document.getElementById('large').naturalWidth > 0)", 60)


def serious_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    if not AXE.is_file():
        pytest.skip(f"axe-core not fetched ({AXE}); .ci/run fetches it with npm")
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("async () => (await axe.run(document)).violations.map("
                          "v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' '))}))")
    return [f"{v['id']} ({v['impact']}): {v['nodes'][:3]}" for v in found if v["impact"] in ("serious", "critical")]


def fits(page: Any, width: int) -> None:
    """Nothing wider than the screen, and every visible control inside it."""
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    outside = page.evaluate(f"""() => [...document.querySelectorAll(
            'button, select, input, label, h2, #large, #legend')]
        .filter(e => e.getClientRects().length && !e.closest('[hidden]'))
        .filter(e => {{ const r = e.getBoundingClientRect(); return r.right > {width} + 0.5 || r.left < -0.5; }})
        .map(e => e.id || e.className || e.tagName)""")
    assert outside == []


def test_search_see_pages_open_one_and_show_its_heatmap(browser: Any, server: Server, shots: Path) -> None:
    page = opened(browser, server.url, DESKTOP)
    searched(page, "quarterly revenue")
    thumbnails_loaded(page)
    hits = page.locator(".hit")
    assert hits.count() == 6  # every page of the sample index, best first
    assert "of 6 pages in" in page.inner_text("#summary") and "tiny-colpali + all-MiniLM-L6-v2" in page.inner_text(
        "#summary")
    scores = [float(page.locator(".hit .score").nth(n).inner_text()) for n in range(6)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.5 > scores[-1]  # hybrid scores tell pages apart
    assert page.locator(".hit .file").first.inner_text().endswith(".pdf")
    page.screenshot(path=str(shots / "serve-results.png"))

    hits.first.click()
    page.wait_for_selector("#viewer[open]", timeout=10_000)
    large_loaded(page)
    before = page.evaluate("[document.getElementById('panel').getBoundingClientRect().width, "
                           "document.getElementById('viewer-title').getBoundingClientRect().height]")
    page.check("#heat")
    until(page, "document.getElementById('legend').textContent.startsWith('Highlighted')", 60)
    painted = page.evaluate("""() => {
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
        return {n, w: c.width, h: c.height};
    }""")
    assert painted["w"] > 100 and painted["n"] > 0.5 * painted["w"] * painted["h"]  # the map covers the page
    words = page.locator("#word option").all_inner_texts()
    assert words[0] == "all words" and [w.split(" (")[0] for w in words[1:]] == ["quarterly", "revenue"]
    page.select_option("#word", index=2)
    assert 'the word "revenue"' in page.inner_text("#legend")
    after = page.evaluate("[document.getElementById('panel').getBoundingClientRect().width, "
                          "document.getElementById('viewer-title').getBoundingClientRect().height]")
    assert after == before  # ticking the heat-map neither widens the panel nor wraps the title
    page.screenshot(path=str(shots / "serve-heatmap.png"))
    page.keyboard.press("Escape")
    assert not page.is_visible("#viewer")
    assert page.csp_blocked == []  # the page's own script and style ran under its Content-Security-Policy
    page.close()


def test_keyboard_alone_opens_a_result_keeps_focus_in_the_viewer_and_closes_it(browser: Any, server: Server) -> None:
    page = opened(browser, server.url, DESKTOP)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "query"
    page.keyboard.type("lemon tart")
    page.keyboard.press("Enter")
    page.wait_for_selector(".hit", timeout=60_000)
    while page.evaluate("document.activeElement.className") != "hit":  # mode, count, Search, then the first result
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("#viewer[open]", timeout=10_000)
    page.wait_for_timeout(500)
    assert page.is_visible("#viewer")  # Enter opened it and did not close it again
    visited = set()
    for _ in range(8):  # round the dialog, never behind it
        page.keyboard.press("Tab")
        visited.add(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
        assert page.evaluate("document.getElementById('viewer').contains(document.activeElement)")
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.getElementById('viewer').contains(document.activeElement)")
    assert {"close", "heat", "stage"} <= visited
    page.keyboard.press("Escape")
    assert not page.is_visible("#viewer")
    assert page.evaluate("document.activeElement.dataset.rank") == "1"  # back on the result that opened it
    page.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "390px"])
def test_no_serious_accessibility_violations(browser: Any, server: Server, viewport: dict[str, int]) -> None:
    page = opened(browser, server.url, viewport, bypass_csp=True)  # axe-core is a script of the test's own
    assert serious_violations(page) == []
    searched(page, "quarterly revenue")
    thumbnails_loaded(page)
    assert serious_violations(page) == []
    page.locator(".hit").first.click()
    large_loaded(page)
    page.check("#heat")
    until(page, "document.getElementById('legend').textContent.startsWith('Highlighted')", 60)
    assert serious_violations(page) == []
    page.goto(server.url + "/login")
    assert serious_violations(page) == []
    page.close()


def test_at_390px_everything_fits(browser: Any, server: Server, shots: Path) -> None:
    page = opened(browser, server.url, PHONE)
    fits(page, 390)
    searched(page, "quarterly revenue")
    thumbnails_loaded(page)
    fits(page, 390)
    page.screenshot(path=str(shots / "serve-phone-results.png"))
    page.locator(".hit").first.click()
    large_loaded(page)
    page.check("#heat")
    until(page, "document.getElementById('legend').textContent.startsWith('Highlighted')", 60)
    fits(page, 390)
    assert page.evaluate("document.getElementById('large').getBoundingClientRect().width") > 300  # the page, readable
    page.screenshot(path=str(shots / "serve-phone-heatmap.png"))
    page.goto(server.url + "/login")
    fits(page, 390)
    page.close()


def test_hits_found_by_text_alone_offer_no_heatmap(browser: Any, server: Server) -> None:
    page = opened(browser, server.url, DESKTOP)
    searched(page, "Okafor", mode="keyword")
    page.locator(".hit").first.click()
    page.wait_for_selector("#viewer[open]")
    assert not page.is_visible("#heat") and "found by its text" in page.inner_text("#heat-note")
    page.close()


def test_every_notice_is_shown_and_none_as_an_error(browser: Any, server: Server) -> None:
    page = opened(browser, server.url, DESKTOP)
    searched(page, " ".join(["quarterly revenue and costs"] * 70)[:2000])  # cut for the text model, and the
    notes = page.locator("#notices li")  # image ranking's weight on this index
    assert notes.count() >= 2
    assert page.inner_text("#error") == ""
    assert all(notes.nth(n).evaluate("e => getComputedStyle(e).color") != ERROR_RED for n in range(notes.count()))
    page.close()


FAILURES = [
    (413, {"error": "Request body over 65,536 bytes."}, {}, ["Request body over 65,536 bytes.", "shorten"]),
    (429, {"error": "Too many searches at once"}, {"Retry-After": "3"}, ["Too many searches at once.",
                                                                         "wait 3 s and try again"]),
    (503, {"error": "the model failed to load: out of memory"}, {}, ["out of memory.", "wait a moment"]),
    (500, {}, {}, ["The server answered 500.", "its log"]),
]


@pytest.mark.parametrize(("status", "body", "headers", "said"), FAILURES, ids=[str(f[0]) for f in FAILURES])
def test_a_failed_search_is_a_sentence_that_says_what_to_do(browser: Any, server: Server, status: int,
                                                            body: dict[str, str], headers: dict[str, str],
                                                            said: list[str]) -> None:
    page = opened(browser, server.url, DESKTOP)
    page.route("**/search", lambda route: route.fulfill(status=status, body=json.dumps(body), headers=headers,
                                                        content_type="application/json"))
    page.fill("#query", "tart")
    page.press("#query", "Enter")
    until(page, "document.getElementById('error').textContent", 10)
    message = page.inner_text("#error")
    assert all(part in message for part in said), message
    page.unroute("**/search")
    page.route("**/search", lambda route: route.abort())
    page.press("#query", "Enter")
    until(page, "document.getElementById('error').textContent.includes('cannot be reached')")
    page.close()


def test_a_moved_file_says_why_and_what_to_do(browser: Any, server: Server, sample_index: Path) -> None:
    original = sample_index.parent / "docs" / "rental-contract.pdf"
    moved = original.with_name("moved.pdf.away")
    page = opened(browser, server.url, DESKTOP)
    original.rename(moved)
    try:
        searched(page, "Okafor", mode="keyword")
        thumbnails_loaded(page)
        assert "no longer where it was ingested from" in page.inner_text(".hit .why")
        page.locator(".hit").first.click()
        until(page, "document.getElementById('page-error').textContent", 30)
        message = page.inner_text("#page-error")
        assert "rental-contract.pdf is no longer where it was ingested from." in message
        assert "ragged ingest" in message and "--prune" in message
        assert not page.is_visible("#large") and not page.is_visible("#heat")
    finally:
        moved.rename(original)
    page.close()


@pytest.fixture
def small_server(tmp_path: Path, model_cache: Path) -> Iterator[tuple[Server, Path]]:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("recipe-card.pdf", "rental-contract.pdf"):
        shutil.copy(EXAMPLES / name, docs / name)
    index = build_index(tmp_path / "index", model_cache, paths=[docs])
    running = Server(index, model_cache, "--idle-unload", "0")
    try:
        running.wait_ready()
        yield running, docs
    finally:
        running.stop()


def test_the_page_count_is_fresh_soon_after_a_prune(browser: Any, small_server: tuple[Server, Path],
                                                    model_cache: Path) -> None:
    server, docs = small_server
    page = opened(browser, server.url, DESKTOP)
    assert page.inner_text("#status").startswith("3 pages")
    env = {**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1", "RAGGED_CONFIG": "/nonexistent"}
    removed = subprocess.run([sys.executable, "-m", "ragged", "remove", str(docs / "rental-contract.pdf"),
                              "--index", str(server.index)], env=env, capture_output=True, text=True, timeout=120)
    assert removed.returncode == 0, removed.stderr
    until(page, "document.getElementById('status').textContent.startsWith('1 page,')", 8)
    page.close()
