"""The dashboard in a real browser (Debian's Chromium driven by Playwright)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid

import pytest

from ops.http import get_json
from sim.records import detection, produce, produce_detections, risk_result
from streams.records import to_bytes
from tests.conftest import ARTIFACTS, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (bash .ci/system-deps.sh)")
def test_dashboard_shows_cameras_and_a_new_alert_within_two_seconds(kafka, deployment, start_worker):
    playwright = pytest.importorskip("playwright.async_api")
    worker = start_worker()
    cameras = ["cam-a", "cam-b", "cam-c"]
    produce_detections(
        kafka.bootstrap,
        deployment.prefix + "detection-results",
        [detection(cam, seq, gap=1.2) for cam in cameras for seq in range(3)],
    )
    wait_until(lambda: get_json(f"http://127.0.0.1:{worker.port}/cameras/")["count"] == 3, 60, "3 cameras")
    wait_until(lambda: len(get_json(f"http://127.0.0.1:{worker.port}/results/")["results"]) == 9, 60, "9 results")
    # an hour of results is not read (and decoded on the event loop) for one request
    assert len(get_json(f"http://127.0.0.1:{worker.port}/results/?limit=2")["results"]) == 2

    async def drive() -> float:
        async with playwright.async_playwright() as p:
            browser = await p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    "--disable-sync",
                ],
            )
            page = await browser.new_page(viewport={"width": 1366, "height": 820})
            opened = await page.goto(f"http://127.0.0.1:{worker.port}/?token={os.environ['ROADWATCH_WEB_TOKEN']}")
            assert opened is not None and opened.headers.get("referrer-policy") == "no-referrer"
            await page.wait_for_selector(".tile[data-camera='cam-c'] img", timeout=15_000)
            assert "token" not in page.url  # out of the address bar and the history, kept for the tab
            await page.wait_for_function("document.querySelectorAll('.tile').length === 3", timeout=15_000)
            # the inline crop decodes with auth on (a token appended to its data URL corrupted it)
            await page.wait_for_function(
                "(() => { const i = document.querySelector(\".tile[data-camera='cam-c'] .crop img\");"
                " return i && i.complete && i.naturalWidth > 0; })()",
                timeout=10_000,
            )
            # a crop URL from elsewhere (a relayed payload is not trusted) is not loaded: the token
            # would go with it
            assert await page.evaluate("imageSrc('https://evil.example/p.gif')") is None
            assert (
                await page.evaluate("imageSrc('data:image/jpeg;base64,/9j/4AAQ')") == "data:image/jpeg;base64,/9j/4AAQ"
            )
            assert (await page.evaluate("imageSrc('/images/file/12-ab')")).startswith("/images/file/12-ab?token=")
            # no price table here: the spend line says its zeros are not counted, not that calls are free
            await page.wait_for_function("document.getElementById('spend').textContent.includes('no price for')")
            await page.wait_for_timeout(1500)  # the WebSocket is connected and the alert list loaded
            before = await page.locator("#alerts li").count()
            task_id = "browser-" + uuid.uuid4().hex[:8]
            det = detection("cam-b", 50)
            now = time.time() * 1000
            result = risk_result(
                "cam-b",
                task_id,
                detection_id=det.detection_id,
                group_id=det.groups[0].group_id,
                score=0.97,
                summary=f"Imminent conflict ({task_id})",
                model="qwen-vl-max",
                latency_ms=300.0,
                captured_at=now - 500,
                completed_at=now,
            )
            sent = time.monotonic()
            await produce(kafka.bootstrap, deployment.prefix + "risk-assessment-results", [("cam-b", to_bytes(result))])
            await page.wait_for_selector(f"#alerts li:has-text('{task_id}')", timeout=10_000)
            shown_after = time.monotonic() - sent
            assert await page.locator("#alerts li").count() == before + 1
            badge = await page.locator(".tile[data-camera='cam-b'] .badge").inner_text()
            assert "critical" in badge
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
            assert await page.locator(".tile.stale").count() == 0  # every camera just sent something
            # a camera silent for a minute (on the worker's clock) greys out: its last level is not current
            stale = await page.evaluate(
                "(() => { serverNow = 1000; render({camera_id: 'cam-gone', updated_at: 940});"
                " return document.getElementById('cam-cam-gone').className; })()"
            )
            assert "stale" in stale
            # a measured alert awaits the VLM's verdict on the worker's clock: with this browser's clock an
            # hour ahead it still awaits, and once the worker's clock passes the wait it says none came
            waits = """(skew) => { clockSkewMs = skew; const at = Date.now() + clockSkewMs;
              addAlert({task_id: 'skewed', camera_id: 'cam-a', level: 'high', source: 'measured', group_id: 'g1',
                        raised_at: at, summary: 'measured'});
              expireWaits();
              return document.getElementById('alert-cam-a-skewed').querySelector('.src').textContent; }"""
            assert "awaiting VLM" in await page.evaluate(waits, -3_600_000)
            await page.evaluate("clockSkewMs += 2 * verdictWaitMs; expireWaits()")
            assert "no VLM verdict" in await page.locator("#alert-cam-a-skewed .src").inner_text()
            await browser.close()
            return shown_after

    shown_after = asyncio.run(drive())
    print(f"alert shown {shown_after:.2f}s after its result was produced")
    assert shown_after < 2.0
