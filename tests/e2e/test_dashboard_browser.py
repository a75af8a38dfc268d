"""The dashboard in a real headless Chromium over the whole system: the charts draw the
jobs just run, the instances table shows the running streamer, a failed job shows its
reason and an admin's Retry button, which posts the retry; no script error, no CSP breach.

Chromium is Debian's (`make system-deps`), driven by the `playwright` package: no browser
is downloaded. A screenshot is written to $STREAMJOBS_DASHBOARD_SCREENSHOT if set (that is
how docs/dashboard.png is made), else to the test's state folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import ConsoleMessage, Error, async_playwright

from deploy.localstack.stack import Stack
from shared.auth import issue_token
from tests.e2e.test_pipeline import submit
from tests.support import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.postgres]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000


async def api(base: str, token: str, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/api/v1{path}", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def final(base: str, token: str, job_id: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        status, body = await api(base, token, f"/jobs/{job_id}")
        done = status == 200 and body["status"] in ("completed", "failed", "cancelled")
        return body if done else None

    return await wait_for(probe, timeout=60, message=f"job {job_id} not final")


async def test_the_dashboard_draws_charts_instances_and_failed_jobs_in_chromium(
    system: Stack, user_token: str, test_state_dir: Path
) -> None:
    base = system.urls()["gateway"]
    admin = issue_token(system.auth_secret(), "ops", ("admin",))
    prompts = [f"Dashboard job {i} [[sim tokens=40]]" for i in range(3)]
    accepted = [await submit(base, user_token, prompt=p, job_type="analysis") for p in prompts]
    failing = await submit(base, user_token, prompt="Doomed [[sim fail=400]]", job_type="analysis")
    for job in accepted:
        assert (await final(base, user_token, job["job_id"]))["status"] == "completed"
    failed = await final(base, user_token, failing["job_id"])
    assert failed["status"] == "failed" and failed["error"], failed

    async def streamer_up() -> dict[str, Any] | None:
        status, body = await api(base, admin, "/instances")
        assert status == 200, body
        return next((i for i in body["items"] if i["state"] == "up"), None)

    instance = await wait_for(streamer_up, timeout=30, message="no streamer heartbeat")
    _, document = await api(base, admin, "/openapi.json")
    retry_served = "post" in document["paths"].get("/api/v1/jobs/{job_id}/retry", {})

    shot = Path(os.environ.get("STREAMJOBS_DASHBOARD_SCREENSHOT") or test_state_dir / "dash.png")
    errors: list[str] = []
    policy: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if "Content Security Policy" in msg.text or "Content-Security-Policy" in msg.text:
            policy.append(msg.text)

    def on_page_error(exc: Error) -> None:
        errors.append(str(exc))

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(test_state_dir / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("console", on_console)
            page.on("pageerror", on_page_error)
            await page.goto(f"{base}/dashboard")
            await page.fill("#token", admin)
            await page.press("#token", "Enter")

            # The charts: a canvas each, over the series' steps, with the jobs just run.
            for chart in ("chart-jobs", "chart-tokens", "chart-queue", "chart-wait", "chart-ttft"):
                await page.wait_for_selector(f"#{chart} canvas", timeout=WAIT_MS)
                assert int(await page.get_attribute(f"#{chart}", "data-points") or 0) > 1, chart
            for chart in ("chart-jobs", "chart-tokens", "chart-wait", "chart-ttft"):
                await page.wait_for_function(
                    f"() => Number(document.getElementById('{chart}').dataset.total) > 0",
                    timeout=WAIT_MS,
                )

            # The streamer instances table: the running streamer, up, with its slots.
            row = page.locator(f'tr.instance[data-instance="{instance["instance_id"]}"]')
            await row.wait_for(timeout=WAIT_MS)
            assert await row.locator("td.state-up").inner_text() == "up"
            slots = await row.locator("td.slots").inner_text()
            assert slots.endswith(f"/ {instance['slots_total']}"), slots

            # The failed job: its reason, and a Retry button that posts the retry.
            failed_row = page.locator(f'tr.failed-job[data-job="{failing["job_id"]}"]')
            await failed_row.wait_for(timeout=WAIT_MS)
            assert await failed_row.locator("td.reason").inner_text() == failed["error"]
            assert "400" in failed["error"]
            button = failed_row.locator("button.retry")
            assert await button.inner_text() == "Retry"
            image = await page.screenshot(path=str(shot), full_page=True)
            async with page.expect_request(
                lambda r: (
                    r.method == "POST" and r.url == f"{base}/api/v1/jobs/{failing['job_id']}/retry"
                )
            ) as sent:
                await button.click()
            request = await sent.value
            assert request.headers["authorization"] == f"Bearer {admin}"
            outcome = page.locator("#retry-outcome")
            await page.wait_for_function(
                "() => !document.getElementById('retry-outcome').textContent.includes('…')",
                timeout=WAIT_MS,
            )
            told = await outcome.inner_text()
            assert failing["job_id"][:8] in told
            if retry_served:  # the new job's id, a job the admin can read
                new = re.search(r"runs again as (\S+)$", told)
                assert new is not None, told
                rerun = await final(base, admin, new.group(1))
                assert rerun["status"] == "failed", rerun  # the same inputs, so again
            else:  # the problem the gateway answered
                assert re.search(r"refused \(40[45], ", told), told

            # A user's token: no instances, no Retry button, the user's own failed job.
            await page.fill("#token", user_token)
            await page.press("#token", "Enter")
            await page.wait_for_function(
                "() => document.getElementById('instances-note').textContent.includes('admin')",
                timeout=WAIT_MS,
            )
            # Rows are drawn again on each refresh: wait for the user's, without a button.
            await page.wait_for_function(
                """(id) => {
                    const row = document.querySelector(`tr.failed-job[data-job="${id}"]`);
                    return row !== null && row.querySelector("button.retry") === null;
                }""",
                arg=failing["job_id"],
                timeout=WAIT_MS,
            )
        finally:
            await context.close()

    assert errors == [], errors
    assert policy == [], policy
    assert image.startswith(b"\x89PNG") and len(image) > 10_000
