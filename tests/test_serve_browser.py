"""The web page of ``conformer serve`` driven in a real browser: headless Chromium from Debian's
``chromium`` package, through Playwright's Python API (``executable_path``: no browser download).

Uploads a real Fashion-MNIST image as a user would, reads the class name the page shows and compares
it with ``POST /v1/predict``; checks the bars and the Grad-CAM images are drawn and that the page
loads nothing from anywhere but the server. Skipped, with the reason, only when the browser or
Playwright's package is missing (scripts/setup.sh installs both).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import inference_testlib as T
import pytest
import serve_testlib as S

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium binary (Debian package 'chromium', installed by scripts/setup.sh)"
)


@pytest.fixture(scope="module")
def server(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S.Server]:
    log = tmp_path_factory.mktemp("serve") / "browser.log"
    server = S.Server.start(T.checkpoint(base), log_path=log)
    yield server
    assert server.stop() == 0, server.log()[-3000:]


def test_page_classifies_an_uploaded_image_like_the_api(server, base, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    image = S.sample_images(T.fashion_mnist(base), 12)[11]  # a real Fashion-MNIST validation image
    expected = httpx.post(f"{server.url}/v1/predict", files=S.uploads([image])).json()["predictions"][0]
    requested: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("request", lambda r: requested.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state=done]", timeout=60_000)
            shown = page.inner_text("#top1").strip()
            rows = page.locator("#bars .row")
            names = [rows.nth(i).locator(".name").inner_text().strip() for i in range(rows.count())]
            bars = page.locator("#bars .fill").count()
            cams = page.evaluate("['cam-input', 'cam-cnn', 'cam-trans'].map(id => document.getElementById(id).naturalWidth)")
            explained = page.is_visible("#explain")
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert shown == expected[0]["name"]
    assert names == [e["name"] for e in expected]  # the top-5, in order
    assert bars == 15  # fused, CNN head and transformer head for each of the 5
    assert explained and cams == [224, 224, 224]
    local = (server.url, "data:", "blob:")
    assert all(url.startswith(local) for url in requested), [u for u in requested if not u.startswith(local)]
    assert (tmp_path / "page.png").stat().st_size > 10_000
