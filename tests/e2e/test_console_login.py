"""Signing in to the operator console, in a real browser (Debian's Chromium driven by Playwright).

With access control on, the console shows a sign-in form until a person signs in; it says why a
sign-in failed (wrong name or password, too many attempts); once signed in it shows the live
machinery, who is signed in and their role; the controls the role may not use are disabled
(never the stops); a refusal (403) shows its reason; and a session that ends (signed out,
revoked) brings the form back.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.async_api import Page, ViewportSize, async_playwright, expect

from edge.auth import AuthStore, Role
from edge.config import load_venue
from tests.conftest import free_port, run_service, wait_for_port, write_venue
from tests.e2e.test_console import ARGS, CHROMIUM

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
TABLET: ViewportSize = {"width": 820, "height": 1180}  # a 10.9" tablet, upright


def store_of(path: Path) -> AuthStore:
    venue = load_venue(path)
    return AuthStore(venue.resolve(venue.config.auth.path))


@pytest.fixture
def venue(tmp_path: Path, simulator_process: Callable[[Path], subprocess.Popen[bytes]]) -> Path:
    """Two simulated hoists, access control on (3 failed sign-ins a minute), two users."""
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
    text = path.read_text()
    off = "[auth]\nenabled = false"
    assert off in text
    path.write_text(text.replace(off, "[auth]\nlogin_attempts = 3\nlogin_window_s = 60", 1))
    store = store_of(path)
    store.add_user("op", Role.OPERATOR, PASSWORD)
    store.add_user("viewer", Role.VIEWER, PASSWORD)
    simulator_process(path)
    wait_for_port(port)
    return path


async def sign_in(page: Page, name: str, password: str) -> int:
    """Fill the form and press Sign in; the status of the sign-in request."""
    await page.locator("#signin-name").fill(name)
    await page.locator("#signin-password").fill(password)
    async with page.expect_response("**/api/v1/auth/login") as answer:
        await page.locator("#signin-button").click()
    return (await answer.value).status


async def test_sign_in_roles_and_sign_out(venue: Path, tmp_path: Path) -> None:
    store = store_of(venue)
    async with run_service(venue) as service, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport=TABLET)
            await page.goto(f"http://127.0.0.1:{service.bound_api_port}/")
            form = page.locator("#signin")
            error = page.locator("#signin-error")
            card = page.locator('article.axis[data-device="hoist-1"]')
            move = card.locator("button[type=submit]")

            # Signed out: the form, not the pages; large enough for a finger on a tablet.
            await expect(form).to_be_visible()
            await expect(page.locator("main")).to_be_hidden()
            await expect(page.locator("#estop")).to_be_hidden()
            box = await page.locator("#signin-button").bounding_box()
            assert box is not None and box["height"] >= 48 and box["width"] <= TABLET["width"]
            await page.screenshot(path=str(tmp_path / "signin.png"))

            # A wrong password: the reason, in the form; still signed out.
            assert await sign_in(page, "op", "not the password") == 401
            await expect(error).to_have_text("wrong name or password")
            await expect(page.locator("main")).to_be_hidden()

            # The operator: live positions, who and which role, the controls enabled.
            assert await sign_in(page, "op", PASSWORD) == 200
            await expect(form).to_be_hidden()
            await expect(page.locator("#link")).to_have_text("live")
            await expect(page.locator("#user-name")).to_have_text("op")
            await expect(page.locator("#user-role")).to_have_text("operator")
            await expect(card.locator(".position")).to_have_text("2000.0")
            await expect(
                page.locator('article.axis[data-device="hoist-2"] .position')
            ).to_have_text("7000.0")
            await expect(move).to_be_enabled()
            await expect(page.locator("#hold")).to_be_enabled()

            # Demoted while signed in: the next move is refused (403) with its reason, and the
            # console takes the new role's permissions.
            store.set_role("op", Role.VIEWER)
            await card.locator("input[name=position]").fill("2500")
            await move.click()
            await expect(card.locator(".reason")).to_contain_text(
                "op (viewer) may not do this: it needs the maintain or run permission"
            )
            await expect(page.locator("#user-role")).to_have_text("viewer")
            await expect(move).to_be_disabled()

            # Sign out: the form again, and the pages gone.
            async with page.expect_response("**/api/v1/auth/logout") as out:
                await page.locator("#signout").click()
            assert (await out.value).status == 200
            await expect(form).to_be_visible()
            await expect(error).to_have_text("Signed out.")
            await expect(page.locator("main")).to_be_hidden()
            assert await page.locator("article.axis").count() == 0

            # A viewer: sees everything, may not move, may always stop.
            assert await sign_in(page, "viewer", PASSWORD) == 200
            await expect(page.locator("#user-role")).to_have_text("viewer")
            await expect(card.locator(".position")).to_have_text("2000.0")
            await expect(move).to_be_disabled()
            await expect(card.locator("input[name=position]")).to_be_disabled()
            await expect(page.locator("#hold")).to_be_disabled()
            await expect(page.locator("#estop")).to_be_enabled()
            await expect(card.locator("button.stop")).to_be_enabled()
            await expect(card).to_have_attribute("data-supervised", "")
            async with page.expect_response("**/api/v1/machinery/stop") as stopped:
                await card.locator("button.stop").click()
            assert (await stopped.value).status == 200
            await expect(card.locator(".reason")).to_have_text("")
            async with page.expect_response("**/api/v1/machinery/estop") as estop:
                await page.locator("#estop").click()
            assert (await estop.value).status == 200
            await expect(page.locator("#notice")).to_have_text("")
            await page.screenshot(path=str(tmp_path / "viewer.png"))

            # The viewer is disabled from the command line: the next request (401) brings the
            # form back, with the reason.
            store.set_disabled("viewer", True)
            await card.locator("button.stop").click()
            await expect(form).to_be_visible()
            await expect(error).to_contain_text("Signed out: this session or token was revoked")

            # Too many failed sign-ins: told to wait, the button held off meanwhile.
            for _ in range(3):
                assert await sign_in(page, "op", "guessing again") == 401
                await expect(error).to_have_text("wrong name or password")
            assert await sign_in(page, "op", PASSWORD) == 429
            await expect(error).to_contain_text("Too many failed sign-ins: wait")
            await expect(page.locator("#signin-button")).to_be_disabled()
            await expect(page.locator("main")).to_be_hidden()
        finally:
            await browser.close()
