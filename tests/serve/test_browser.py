"""The web page in a real browser: headless Chromium driven by Playwright.

Skips cleanly where no Chromium is installed (Debian's ``chromium``
package; ``.ci/run`` installs it). ``RAGGED_SCREENSHOT_DIR`` keeps the
screenshots (docs/images/serve-*.png come from here).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.serve.conftest import Server

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


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


def until(page, expression: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Wait until ``expression`` is true in the page. Polled from here, not
    with wait_for_function: that evaluates a string inside the page, which the
    server's Content-Security-Policy forbids (as it should)."""
    end = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < end, f"timed out waiting for {expression}"
        time.sleep(0.1)


def test_search_see_pages_open_one_and_show_its_heatmap(browser, server: Server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shots = Path(os.environ.get("RAGGED_SCREENSHOT_DIR") or tmp_path)
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    blocked: list[str] = []  # the page's own script and style must run under its Content-Security-Policy
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(server.url, wait_until="domcontentloaded")
    until(page, "document.getElementById('status').textContent.includes('pages')")
    page.fill("#query", "quarterly revenue")
    page.press("#query", "Enter")
    page.wait_for_selector(".hit", timeout=60_000)
    until(page, "[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)")
    hits = page.locator(".hit")
    assert hits.count() == 6  # every page of the sample index, best first
    assert "of 6 pages in" in page.inner_text("#summary")
    assert page.locator(".hit .file").first.inner_text().endswith(".pdf")
    page.screenshot(path=str(shots / "serve-results.png"))

    hits.first.click()
    page.wait_for_selector("#viewer.open", timeout=10_000)
    until(page, "document.getElementById('large').complete && document.getElementById('large').naturalWidth >= 1280")
    page.check("#heat")
    until(page, "document.getElementById('legend').textContent.includes('patches')")
    painted = page.evaluate("""() => {
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
        return {n, w: c.width, h: c.height};
    }""")
    assert painted["w"] > 100 and painted["n"] > 0.5 * painted["w"] * painted["h"]  # the map covers the page
    assert page.locator("#token option").count() > 1  # one choice per query token
    page.screenshot(path=str(shots / "serve-heatmap.png"))
    page.keyboard.press("Escape")
    assert not page.is_visible("#viewer")
    assert blocked == []
    page.close()
