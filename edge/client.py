"""A small asyncio client for show-control scripts: the same playback API as REST and ``/ws``.

    import asyncio
    from edge.client import FlytowerClient

    async def main() -> None:
        async with FlytowerClient("http://127.0.0.1:8080", name="preshow.py") as ft:
            await ft.standby("main", 1)
            await ft.go("main")
            await ft.wait_for_cue("main", "2", timeout_s=60)  # followed by cue 1
            print(await ft.snapshot())

    asyncio.run(main())

Every command is journalled with the source ``script <name> <peer>`` (the ``X-Flytower-Client``
header). A refused command raises ``PlaybackRefused`` with the server's reason and status (409:
the state refuses it, e.g. debounce; 422: unknown list/cue or a malformed request).
``wait_for_cue`` follows the ``/ws`` playback feed, so it returns as soon as the cue is current.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any, Self

import httpx
import websockets

from controller.show.model import format_cue_number, parse_cue_number


class PlaybackRefused(Exception):
    def __init__(self, status: int, reason: Any) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class FlytowerClient:
    """``async with FlytowerClient(url, name=...)``: reusable, not reentrant."""

    def __init__(self, url: str, *, name: str = "script", timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self._http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout_s, headers={"X-Flytower-Client": f"script {name}"}
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def _post(self, command: str, **body: Any) -> dict[str, Any]:
        payload = {k: v for k, v in body.items() if v is not None}
        r = await self._http.post(f"/api/v1/playback/{command}", json=payload)
        if r.status_code != 200:
            try:
                reason = r.json().get("detail", r.text)
            except ValueError:
                reason = r.text
            raise PlaybackRefused(r.status_code, reason)
        return dict(r.json())

    async def snapshot(self) -> dict[str, Any]:
        r = await self._http.get("/api/v1/playback")
        r.raise_for_status()
        return dict(r.json())

    async def go(
        self, list_id: str | None = None, cue: str | float | None = None
    ) -> dict[str, Any]:
        return await self._post("go", list=list_id, cue=None if cue is None else str(cue))

    async def standby(self, list_id: str | None, cue: str | float) -> dict[str, Any]:
        return await self._post("standby", list=list_id, cue=str(cue))

    async def back(self, list_id: str | None = None) -> dict[str, Any]:
        return await self._post("back", list=list_id)

    async def stop(
        self, list_id: str | None = None, cue: str | float | None = None
    ) -> dict[str, Any]:
        return await self._post("stop", list=list_id, cue=None if cue is None else str(cue))

    async def pause(self, list_id: str | None = None) -> dict[str, Any]:
        return await self._post("pause", list=list_id)

    async def resume(self, list_id: str | None = None) -> dict[str, Any]:
        return await self._post("resume", list=list_id)

    async def release(self, list_id: str | None = None, fade_s: float = 0.0) -> dict[str, Any]:
        return await self._post("release", list=list_id, fade_s=fade_s)

    async def panic(self) -> dict[str, Any]:
        return await self._post("panic")

    async def wait_for_cue(
        self, list_id: str, cue: str | float, *, complete: bool = False, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Wait until ``cue`` is the list's current cue (and, with ``complete``, no cue of the
        list runs any more); returns that list's state. Raises TimeoutError."""
        want = format_cue_number(parse_cue_number(cue))

        def reached(snap: dict[str, Any]) -> dict[str, Any] | None:
            for lst in snap.get("lists", []):
                if lst["id"] != list_id:
                    continue
                current = (lst.get("current") or {}).get("number")
                if current == want and (not complete or not lst["running"]):
                    return dict(lst)
            return None

        if (hit := reached(await self.snapshot())) is not None:
            return hit
        ws_url = "ws" + self.url.removeprefix("http") + "/ws"
        async with asyncio.timeout(timeout_s), websockets.connect(ws_url) as ws:
            async for raw in ws:
                msg = json.loads(raw)
                if msg.get("type") == "playback" and (hit := reached(msg["snapshot"])):
                    return hit
        raise TimeoutError(f"cue {want} of {list_id} not reached")  # pragma: no cover
