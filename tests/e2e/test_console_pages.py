"""The console's pages in a real browser (Debian's Chromium driven by Playwright): Show, Machinery,
Lighting, Equipment and Acoustics over the WebSocket's topics and the REST API.

One venue: two simulated hoists, two LED PARs on a DMX universe sent over sACN to the simulated
receivers, a show with a lighting cue and a machinery cue, an alarm rule that a hoist's starting
position trips, and service intervals. Access control is off here (sign-in has its own test).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, ViewportSize, async_playwright, expect

from edge.auth import Role
from tests.conftest import free_port, run_service, wait_for_port, wait_until, write_venue
from tests.e2e.test_console import ARGS, CHROMIUM
from tests.e2e.test_console_login import PASSWORD, sign_in, store_of

pytestmark = pytest.mark.e2e

TABLET: ViewportSize = {"width": 820, "height": 1180}  # a 10.9" tablet, upright
LO = "127.0.0.1"

SHOW = """
version = 1
[show]
title = "Console pages"
[[lists]]
id = "main"
name = "Main"
go_debounce_s = 1.5
[[lists.cues]]
number = 1
label = "Lights up, border in"
actions = [
  { kind = "lighting.levels", fade_s = 0.3, levels = [{ fixture = "par-1", level = 100 }] },
  { kind = "machinery.move", axes = [{ device = "hoist-1", position = 2600, speed = 1000 }] },
]
[[lists.cues]]
number = 2
label = "Border out, slowly"
actions = [
  { kind = "machinery.move", axes = [{ device = "hoist-1", position = 9000, speed = 300 }] },
]
[[lists.cues]]
number = 3
label = "Blackout <b>now</b>"  # shown as text, never as markup
actions = [{ kind = "lighting.levels", levels = [{ fixture = "par-1", level = 0 }] }]
"""


def pages_venue(folder: Path, control_port: int) -> Path:
    """The venue file (and its show) in ``folder``."""
    path = write_venue(
        folder,
        [
            # A 1 s drive watchdog: a loaded machine may starve the service's loop past the
            # default 200 ms (the watchdog has its own tests).
            {"id": "hoist-1", "port": (port := free_port()), "start": 2000, "watchdog_ms": 1000},
            {"id": "hoist-2", "port": port, "unit": 2, "start": 7000, "watchdog_ms": 1000},
        ],
    )
    extra = f"""
[panic]
fade_s = 0.2
[[dmx.outputs]]
protocol = "sacn"
universes = [1]
targets = ["{LO}"]
udp_port = {free_port()}
[simulation]
control_port = {control_port}
[alarms]
[[alarms.rules]]
id = "hoist-high"
kind = "high"
severity = "minor"
devices = ["hoist-2"]
point = "position"
limit = 6500.0
deadband = 10.0
[maintenance]
[maintenance.classes.hoist]
days = 1
due_at = 0.01
"""
    # Modbus answers may wait a second on a loaded machine before the drive counts as offline.
    text = path.read_text().replace("timeout_s = 0.3", "timeout_s = 1.0")
    text = text.replace("[telemetry]", extra.lstrip() + "[telemetry]", 1)
    text = 'show = "show.toml"\n' + text  # a top-level key comes before any table
    text += """
[[devices]]
id = "par-1"
profile = "led_par_rgbw"
transport = { kind = "dmx", universe = 1, address = 1 }
simulate = { model = "led_par_rgbw" }

[[devices]]
id = "par-2"
profile = "led_par_rgbw"
transport = { kind = "dmx", universe = 1, address = 9 }
simulate = { model = "led_par_rgbw" }
"""
    path.write_text(text)
    (folder / "show.toml").write_text(SHOW)
    return path


@pytest.fixture
def control_port() -> int:
    return free_port()


@pytest.fixture
def venue(
    tmp_path: Path,
    control_port: int,
    simulator_process: Callable[..., subprocess.Popen[bytes]],
) -> Path:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test`, which installs it")
    path = pages_venue(tmp_path, control_port)
    simulator_process(path, control_port=control_port)
    wait_for_port(control_port)
    return path


async def truth(sim: httpx.AsyncClient, device: str) -> dict[str, Any]:
    """What the simulated device really does (the simulators' control endpoint)."""
    body = (await sim.get("/sim/v1/truth", params={"ids": device})).json()
    return dict(body["devices"][device])


async def state(rest: httpx.AsyncClient, sim: httpx.AsyncClient) -> str:
    """What the service and the simulators say, for a failure's message."""
    playback = (await rest.get("/api/v1/playback")).json()
    machinery = (await rest.get("/api/v1/machinery")).json()
    return (
        f"playback {playback}; machinery {machinery}; "
        f"par-1 {await truth(sim, 'par-1')}; hoist-1 {await truth(sim, 'hoist-1')}"
    )


async def no_horizontal_scroll(page: Page) -> None:
    widths = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"the page scrolls sideways: {widths}"


async def visit(page: Page, name: str) -> None:
    """Open a page from the navigation bar, as a finger would."""
    await page.locator(f'nav a[data-page="{name}"]').click()
    await expect(page.locator(f"#page-{name}")).to_be_visible()
    await expect(page.locator(f'nav a[data-page="{name}"]')).to_have_attribute(
        "aria-current", "page"
    )


async def test_console_pages_at_tablet_size(venue: Path, control_port: int, tmp_path: Path) -> None:
    shots = tmp_path / "shots"
    shots.mkdir()
    async with (
        run_service(venue) as service,
        httpx.AsyncClient(base_url=f"http://{LO}:{control_port}", timeout=5) as sim,
        httpx.AsyncClient(base_url=f"http://{LO}:{service.bound_api_port}", timeout=5) as rest,
        async_playwright() as p,
    ):
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport=TABLET)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"http://{LO}:{service.bound_api_port}/#show")
            await expect(page.locator("#link")).to_have_text("live")

            # The console's JSON Patch (RFC 6902, JSON pointers with ~1 and ~0), as it runs here.
            patched = await page.evaluate(
                """async () => {
                  const { applyPatch } = await import("/static/core.js");
                  const doc = {"a/b": {"c~d": 1}, list: [1, 2], keep: true};
                  return applyPatch(doc, [
                    {op: "replace", path: "/a~1b/c~0d", value: 2},
                    {op: "add", path: "/new", value: {x: null}},
                    {op: "remove", path: "/keep"},
                    {op: "replace", path: "/list", value: [3]},
                    {op: "add", path: "/list/0", value: 0},
                  ]);
                }"""
            )
            assert patched == {"a/b": {"c~d": 2}, "list": [0, 3], "new": {"x": None}}

            # Show: the cue list, standby on the first cue, GO ready.
            go = page.locator("#show-go")
            await expect(page.locator("#show-title")).to_have_text("Console pages")
            await expect(page.locator("#show-standby")).to_have_text("1 · Lights up, border in")
            await expect(page.locator("#cue-rows tr.cue")).to_have_count(3)
            await expect(page.locator('#cue-rows tr.cue[data-cue="1"]')).to_have_class(
                "cue standby"
            )
            await expect(go).to_have_attribute("data-state", "ready")
            label = page.locator('#cue-rows tr.cue[data-cue="3"] td.label')
            await expect(label).to_have_text("Blackout <b>now</b>")
            await expect(page.locator("#cue-rows b")).to_have_count(0)
            await no_horizontal_scroll(page)
            await page.screenshot(path=str(shots / "show.png"), full_page=True)

            # Hold to run (a second finger), then GO with the space bar: cue 1 is current, the
            # GO button shows its debounce, and a GO inside it is refused with the reason.
            hold = page.locator("#hold")
            await hold.dispatch_event("pointerdown", {"pointerId": 7})
            await expect(hold).to_have_class("held")
            await page.keyboard.press(" ")
            await expect(page.locator("#show-current")).to_have_text("1 · Lights up, border in")
            await expect(page.locator("#show-standby")).to_have_text("2 · Border out, slowly")
            await expect(go).to_have_attribute("data-state", "debounce")
            await go.click()
            await expect(page.locator("#show-reason")).to_contain_text("between GOs")
            await expect(go).to_have_attribute("data-state", "ready", timeout=5000)

            # The cue reached the simulated PAR (over sACN) and the simulated hoist ...
            async def lit() -> bool:
                return bool((await truth(sim, "par-1")).get("intensity") == 100)

            async def arrived() -> bool:
                return bool(abs((await truth(sim, "hoist-1"))["position_mm"] - 2600) < 2)

            try:
                await wait_until(lit, 15, "the simulated par-1 at full")
                await wait_until(arrived, 15, "the simulated hoist-1 at 2600 mm")
            except pytest.fail.Exception as exc:
                raise AssertionError(f"{exc}; {await state(rest, sim)}") from None
            # ... and the console shows both: the axis on Machinery, the level on Lighting.
            await visit(page, "machinery")
            card = page.locator('article.axis[data-device="hoist-1"]')
            await expect(card.locator(".position")).to_have_text("2600.0", timeout=10_000)
            await expect(card).to_have_attribute("data-supervised", "")
            await visit(page, "lighting")
            fixture = page.locator('article.fixture[data-fixture="par-1"]')
            await expect(fixture.locator('dd[data-attribute="intensity"]')).to_have_text("100")
            await expect(page.locator('#universe-grid .cell[data-address="1"]')).to_have_text("255")

            # E-stop from the Show page while cue 2 moves the hoist: motion stops.
            await visit(page, "show")
            await go.click()
            await expect(page.locator("#show-current")).to_have_text("2 · Border out, slowly")
            running = page.locator('#show-running article.running-cue[data-cue="2"]')
            await expect(running.locator("li.action")).to_have_count(1)

            async def moving() -> bool:
                return bool((await truth(sim, "hoist-1"))["position_mm"] > 2700)

            await wait_until(moving, 10, "hoist-1 moving up")
            await page.screenshot(path=str(shots / "show-running.png"), full_page=True)
            await page.locator("#estop").click()
            await expect(page.locator("#estop-banner")).to_be_visible()

            async def stopped() -> bool:
                t = await truth(sim, "hoist-1")
                return bool(abs(t.get("velocity_mm_s", 0.0)) < 1.0)

            await wait_until(stopped, 5, "hoist-1 stopped")
            at = (await truth(sim, "hoist-1"))["position_mm"]
            assert at < 8000, f"the hoist ran on to {at} mm after the E-stop"
            await hold.dispatch_event("pointerup", {"pointerId": 7})
            await expect(hold).not_to_have_class("held")
            # The Show page says why the cue ended: its move failed with the E-stop.
            await expect(page.locator("#show-log li.failed").first).to_contain_text("E-stop")
            await page.screenshot(path=str(shots / "show-estop.png"), full_page=True)
            await page.locator("#estop-reset").click()
            await expect(page.locator("#estop-banner")).to_be_hidden()

            # A tap on a cue puts it on standby.
            await page.locator('#cue-rows tr.cue[data-cue="1"]').click()
            await expect(page.locator("#show-standby")).to_have_text("1 · Lights up, border in")

            # Equipment: the alarm hoist-2's position raised, acknowledged from the console.
            await visit(page, "equipment")
            alarm = page.locator('li.alarm[data-alarm="hoist-high:hoist-2:position"]')
            await expect(alarm).to_have_attribute("data-state", "active_unack")
            await expect(alarm).to_contain_text("position 7000 above 6500")
            await expect(page.locator('#device-rows tr[data-device="hoist-1"]')).to_contain_text(
                "online"
            )
            await alarm.locator("button.ack").click()
            await expect(alarm).to_have_attribute("data-state", "active_ack")
            await expect(alarm.locator("button.ack")).to_have_count(0)
            await expect(page.locator("#chart-title")).to_have_text("hoist-1 · position")
            await expect(
                page.locator('#maintenance-rows tr[data-device="hoist-1"]')
            ).to_contain_text("days")

            # A work order: refused without a title (the reason shown), opened, then done.
            orders = page.locator("#work-order-form")
            await orders.locator("button[type=submit]").click()
            await expect(page.locator("#work-order-reason")).to_have_text("Say what needs doing.")
            await orders.locator("select[name=device]").select_option("hoist-2")
            await orders.locator("input[name=title]").fill("Inspect the <i>wire</i> ropes")
            await orders.locator("button[type=submit]").click()
            order = page.locator("#work-orders li.order").first
            await expect(order).to_contain_text("Inspect the <i>wire</i> ropes")
            await expect(order).to_have_attribute("data-status", "open")
            await order.locator("button.done").click()
            await expect(order).to_have_attribute("data-status", "done")
            await expect(page.locator("#work-order-reason")).to_have_text("")

            # Lighting: a level set over REST shows in the universe grid (par-2 at 9).
            r = await rest.put(
                "/api/v1/lighting/fixtures/par-2", json={"attributes": {"intensity": 40}}
            )
            assert r.status_code == 200, r.text
            await visit(page, "lighting")
            await expect(page.locator('#universe-grid .cell[data-address="9"]')).to_have_text("102")

            # Every page at tablet size: no sideways scrolling, the E-stop on screen, targets
            # large enough for a finger.
            for name in ("show", "machinery", "lighting", "acoustics", "equipment"):
                await visit(page, name)
                await no_horizontal_scroll(page)
                await expect(page.locator("#estop")).to_be_in_viewport()
                for sel in ("#estop", "#hold", f'nav a[data-page="{name}"]'):
                    box = await page.locator(sel).bounding_box()
                    assert box is not None and box["height"] >= 48, (name, sel, box)
                await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
            assert errors == [], errors
        finally:
            await browser.close()


@pytest.fixture
def viewer_venue(tmp_path: Path, simulator_process: Callable[..., subprocess.Popen[bytes]]) -> Path:
    """The same venue with access control on and one viewer."""
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: run `make test`, which installs it")
    control_port = free_port()
    path = pages_venue(tmp_path, control_port)
    text = path.read_text()
    assert "[auth]\nenabled = false" in text
    path.write_text(text.replace("[auth]\nenabled = false", "[auth]", 1))
    store_of(path).add_user("viewer", Role.VIEWER, PASSWORD)
    simulator_process(path, control_port=control_port)
    wait_for_port(control_port)
    return path


async def test_a_viewer_sees_the_show_but_cannot_go(viewer_venue: Path) -> None:
    """Access control on: a viewer's GO, Back, acknowledge and work orders are disabled; the
    stops are not; the space bar starts nothing."""
    path = viewer_venue
    async with run_service(path) as service, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport=TABLET)
            await page.goto(f"http://{LO}:{service.bound_api_port}/#show")
            assert await sign_in(page, "viewer", PASSWORD) == 200
            await expect(page.locator("#user-role")).to_have_text("viewer")
            await expect(page.locator("#show-standby")).to_have_text("1 · Lights up, border in")
            for sel in ("#show-go", "#show-back", "#hold"):
                await expect(page.locator(sel)).to_be_disabled()
            for sel in ("#show-stop", "#show-pause", "#show-panic-button", "#estop"):
                await expect(page.locator(sel)).to_be_enabled()
            await page.keyboard.press(" ")
            await page.locator('#cue-rows tr.cue[data-cue="2"]').click()  # no standby either
            await expect(page.locator("#show-current")).to_have_text("—")
            await expect(page.locator("#show-standby")).to_have_text("1 · Lights up, border in")

            await page.locator('nav a[data-page="equipment"]').click()
            alarm = page.locator('li.alarm[data-alarm="hoist-high:hoist-2:position"]')
            await expect(alarm.locator("button.ack")).to_be_disabled()
            await expect(page.locator("#work-order-form button[type=submit]")).to_be_disabled()
        finally:
            await browser.close()
