"""The operator console in a real browser (Debian's Chromium driven by Playwright).

The page must show every hoist with its live position over the WebSocket, move one when the
operator types a target and presses Move, and show the reason when a command is refused.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from tests.conftest import free_port, run_service, wait_for_port, write_venue

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def venue(tmp_path: Path, simulator_process: Callable[[Path], subprocess.Popen[bytes]]) -> Path:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test`, which installs it")
    port = free_port()
    path = write_venue(
        tmp_path,
        [
            # A 1 s drive watchdog: this test is about the console, and a loaded machine may
            # starve the service's loop past the default 200 ms (the watchdog has its own tests).
            {"id": "hoist-1", "port": port, "start": 2000, "watchdog_ms": 1000},
            {"id": "hoist-2", "port": port, "unit": 2, "start": 7000, "watchdog_ms": 1000},
        ],
    )
    # And a 300 ms staleness limit (not 100 ms): a CI run saw the move aborted for "stale
    # telemetry" on a busy machine before the console could show it moving.
    text = path.read_text()
    path.write_text(text.replace("[telemetry]", "[machinery]\nstale_cycles = 15\n\n[telemetry]", 1))
    simulator_process(path)
    wait_for_port(port)
    return path


async def test_console_shows_live_position_and_moves_a_hoist(venue: Path, tmp_path: Path) -> None:
    async with run_service(venue) as service, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{service.bound_api_port}/")
            await expect(page.locator("#link")).to_have_text("live")
            card = page.locator('article.axis[data-device="hoist-1"]')
            await expect(card.locator(".state")).to_have_text("online")
            await expect(card.locator(".position")).to_have_text("2000.0")
            await expect(
                page.locator('article.axis[data-device="hoist-2"] .position')
            ).to_have_text("7000.0")

            # Refused: beyond the hoist's travel; the reason is shown, nothing moves.
            await card.locator("input[name=position]").fill("20000")
            await card.locator("button[type=submit]").click()
            await expect(card.locator(".reason")).to_contain_text("above the maximum 12000 mm")

            # Without the hold-to-run enable the safety supervisor refuses the move.
            await card.locator("input[name=position]").fill("2600")
            await card.locator("input[name=speed]").fill("1000")
            await card.locator("button[type=submit]").click()
            await expect(card.locator(".reason")).to_contain_text("no hold-to-run enable")

            # Held (a second finger on the button, as on a tablet): the hoist moves.
            hold = page.locator("#hold")
            await hold.dispatch_event("pointerdown", {"pointerId": 7})
            await expect(hold).to_have_class("held")
            await card.locator("button[type=submit]").click()
            await expect(card.locator(".reason")).to_have_text("")
            await expect(card.locator(".drive")).to_have_text("moving", timeout=5000)
            await expect(card.locator(".position")).to_have_text("2600.0", timeout=10_000)
            await page.screenshot(path=str(tmp_path / "console.png"))
            await hold.dispatch_event("pointerup", {"pointerId": 7})
            await expect(hold).not_to_have_class("held")
        finally:
            await browser.close()
