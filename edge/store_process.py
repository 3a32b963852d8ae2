"""The telemetry store in a process of its own (``[telemetry] writer = "process"``).

Why (docs/decisions.md, "Telemetry ingest"): at tens of thousands of readings a second the
store's writer thread (checks, inserts, compaction) takes a fifth to a quarter of the service's
one GIL, which the event loop then waits for. In a process of its own the same
:class:`~edge.store.TelemetryStore` runs on the other core, and the service only turns each
batch into five columns of the readings' fields (``edge.store.to_wire``, in C) and pickles it.

:class:`StoreProcess` has the store's interface as the service uses it (``write``, ``query``,
``history``, ``count``, ``prune``, ``prune_tier``, ``rollup``, the counters ``written``,
``rejected``, ``flagged``, ``rolled_up``, ``pruned``), so nothing above it changes:

- **Durability is unchanged**: ``write`` returns once the store process has committed the
  batch (its reply comes after ``TelemetryStore.write`` returned there).
- **Order is kept**: batches are written one after the other in the order sent; queries run
  beside them, on the store's reader thread, as in one process.
- **Errors come back as themselves** (a ``QueryError`` stays a ``QueryError``, so the API's
  400 is unchanged); an error that cannot be pickled comes back as a ``RuntimeError`` with its
  text.
- **If the store process dies**, every call waiting and every later one raises
  :class:`StoreProcessError` with its exit code: the service's writer stops with that reason,
  as it does when SQLite fails in-process. Nothing acknowledged is lost (it was committed).
- **If the service dies** (``kill -9``), the store process sees its connection close, closes
  the store (the compaction of what was written) and exits.

The link is one Unix stream socket in a private (0700) temporary folder, frames of a 4-byte
length and a pickle: the service listens, the store process connects once, and the listener
closes. Only this user can reach it, and only the one process it started is heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import pickle
import shutil
import signal
import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from drivers.model import Reading, ValueType
from edge.store import (
    QueryResult,
    StoredReading,
    StoreSettings,
    TelemetryQuery,
    TelemetryStore,
    to_wire,
)

log = logging.getLogger(__name__)

_LEN = struct.Struct("!I")
FRAME_MAX = 1 << 30  # a batch of 100 000 readings pickles to a few MB
START_TIMEOUT_S = 60.0  # spawning a fresh interpreter and opening (recovering) the store
CLOSE_TIMEOUT_S = 120.0  # the last compaction at close
# What the service may ask of the store process: everything else is refused there.
METHODS = frozenset(
    {"write_wire", "query", "history", "count", "prune", "prune_tier", "rollup", "close"}
)
COUNTERS = ("written", "rejected", "flagged", "rolled_up", "pruned")


class StoreProcessError(RuntimeError):
    """The store process is gone (or never came up): says why, with its exit code."""


async def _send(writer: asyncio.StreamWriter, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LEN.pack(len(data)))
    writer.write(data)
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> Any:
    """The next frame's object; ``IncompleteReadError`` at the end of the stream."""
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    if n > FRAME_MAX:
        raise ValueError(f"a frame of {n} bytes is more than {FRAME_MAX}")
    return pickle.loads(await reader.readexactly(n))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip, else a RuntimeError with its text."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if isinstance(back, BaseException):
            return back
    except Exception:
        pass
    return RuntimeError(f"{type(exc).__name__}: {exc}")


class StoreProcess:
    """A :class:`~edge.store.TelemetryStore` run in a process of its own; use as
    ``async with StoreProcess(path, settings, dtypes=...) as store``."""

    def __init__(
        self,
        path: Path,
        settings: StoreSettings | None = None,
        *,
        dtypes: Mapping[tuple[str, str], ValueType] | None = None,
    ) -> None:
        self.path = path
        self.settings = settings or StoreSettings()
        self._dtypes = dict(dtypes or {})
        self.written = 0
        self.rejected: dict[str, int] = {}
        self.flagged: dict[str, int] = {}
        self.rolled_up = 0
        self.pruned: dict[str, int] = {"raw": 0, "1s": 0, "1m": 0}
        self.pid: int | None = None
        self._proc: Any = None  # multiprocessing's SpawnProcess
        self._folder: Path | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = 0
        self._gone: StoreProcessError | None = None
        self._closing = False  # the link's end is expected: not an error

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> StoreProcess:
        try:
            await self._start()
        except BaseException:  # refused, failed or cancelled: no process nor folder left
            await self._end()
            raise
        log.info("telemetry store %s in process %d", self.path, self.pid)
        return self

    async def _start(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="flytower-store-"))  # 0700
        sock = self._folder / "store.sock"
        joined: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        joined = asyncio.get_running_loop().create_future()

        def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            if joined.done():
                w.close()  # only the one process this store started is heard
            else:
                joined.set_result((r, w))

        server = await asyncio.start_unix_server(on_connect, path=str(sock))
        try:
            ctx = multiprocessing.get_context("spawn")
            self._proc = ctx.Process(
                target=serve,
                args=(str(sock), str(self.path), self.settings, self._dtypes),
                name="flytower-store",
                daemon=True,
            )
            await asyncio.to_thread(self._proc.start)
            self.pid = self._proc.pid
            self._reader, self._writer = await self._until_joined(joined)
        finally:
            server.close()
        try:
            ready = await asyncio.wait_for(_receive(self._reader), START_TIMEOUT_S)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
            raise StoreProcessError(f"the store process did not open {self.path}: {exc}") from None
        _, ok, payload, counters = ready
        if not ok:
            raise payload
        self._mirror(counters)
        self._replies = asyncio.create_task(self._read_replies(), name="store-process-replies")

    async def _until_joined(
        self, joined: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while not joined.done():
            if not self._proc.is_alive():
                raise StoreProcessError(
                    f"the store process exited (code {self._proc.exitcode}) before it connected"
                )
            if loop.time() > deadline:
                raise StoreProcessError(
                    f"the store process did not connect in {START_TIMEOUT_S:g} s"
                )
            await asyncio.wait({joined}, timeout=0.05)
        return joined.result()

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._gone is None and self._writer is not None:
                self._closing = True
                with contextlib.suppress(StoreProcessError):
                    await asyncio.wait_for(self._call("close"), CLOSE_TIMEOUT_S)
        finally:
            await self._end()

    async def _end(self) -> None:
        """Close the link, reap the process (killed if it does not exit), remove the folder."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._replies is not None:
            self._replies.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replies
        if self._proc is not None and self._proc.pid is not None:  # started
            await asyncio.to_thread(self._proc.join, 10)
            if self._proc.is_alive():
                self._proc.kill()
                await asyncio.to_thread(self._proc.join, 5)
        self._fail(StoreProcessError("the store is closed"))
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    # --- calls -------------------------------------------------------------------------------

    def _mirror(self, counters: Mapping[str, Any] | None) -> None:
        if counters:
            for name in COUNTERS:
                setattr(self, name, counters[name])

    def _fail(self, error: StoreProcessError) -> None:
        if self._gone is None:
            self._gone = error
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(self._gone)

    async def _read_replies(self) -> None:
        assert self._reader is not None
        try:
            while True:
                call, ok, payload, counters = await _receive(self._reader)
                self._mirror(counters)
                fut = self._waiting.pop(call, None)
                if fut is None or fut.done():
                    continue
                if ok:
                    fut.set_result(payload)
                else:
                    fut.set_exception(payload)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            if self._closing:
                self._fail(StoreProcessError("the store is closed"))
                return
            code = None
            if self._proc is not None:  # the link closes as the process dies: reap it
                await asyncio.to_thread(self._proc.join, 10)
                code = self._proc.exitcode
            why = (
                f"the store process ended (exit code {code})"
                if code is not None
                else f"the store process closed its link ({exc})"
            )
            log.error("telemetry store %s: %s", self.path, why)
            self._fail(StoreProcessError(why))
        except Exception as exc:  # a frame that does not unpickle: the link cannot be trusted
            log.exception("telemetry store %s: bad reply", self.path)
            self._fail(StoreProcessError(f"bad reply from the store process: {exc}"))
            if self._writer is not None:
                self._writer.close()

    async def _call(self, method: str, *args: Any) -> Any:
        if self._gone is not None:
            raise self._gone
        assert self._writer is not None, "the store is not open"
        self._ids += 1
        call = self._ids
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[call] = fut
        try:
            await _send(self._writer, (call, method, args))
        except (ConnectionError, OSError) as exc:
            self._waiting.pop(call, None)
            self._fail(StoreProcessError(f"the store process is unreachable: {exc}"))
            raise StoreProcessError(f"the store process is unreachable: {exc}") from None
        except BaseException:  # not sent (an argument that does not pickle): nothing waits
            self._waiting.pop(call, None)
            raise
        return await fut

    # --- TelemetryStore's interface ----------------------------------------------------------

    async def write(self, readings: Sequence[Reading]) -> int:
        """Commit a batch in the store process; returns once it is durable there."""
        if not readings:
            return 0
        return int(await self._call("write_wire", to_wire(readings)))

    async def query(self, q: TelemetryQuery) -> QueryResult:
        result: QueryResult = await self._call("query", q)
        return result

    async def history(
        self,
        device: str,
        point: str,
        start: float | None = None,
        end: float | None = None,
        limit: int = 1000,
    ) -> list[StoredReading]:
        rows: list[StoredReading] = await self._call("history", device, point, start, end, limit)
        return rows

    async def count(self) -> int:
        return int(await self._call("count"))

    async def prune(self, retention_s: float) -> int:
        return int(await self._call("prune", retention_s))

    async def prune_tier(self, tier: str, retention_s: float) -> int:
        return int(await self._call("prune_tier", tier, retention_s))

    async def rollup(self) -> int:
        return int(await self._call("rollup"))


# --- the store process ---------------------------------------------------------------------


def serve(sock: str, path: str, settings: StoreSettings, dtypes: dict[Any, ValueType]) -> None:
    """The store process's main: serve one service's connection until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when the store closes
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s store-process %(name)s: %(message)s"
    )
    asyncio.run(_serve(sock, Path(path), settings, dtypes))


def _counters(store: TelemetryStore) -> dict[str, Any]:
    return {
        "written": store.written,
        "rejected": dict(store.rejected),
        "flagged": dict(store.flagged),
        "rolled_up": store.rolled_up,
        "pruned": dict(store.pruned),
    }


async def _serve(
    sock: str, path: Path, settings: StoreSettings, dtypes: dict[Any, ValueType]
) -> None:
    reader, writer = await asyncio.open_unix_connection(sock)
    lock = asyncio.Lock()  # replies are whole frames, one at a time
    store = TelemetryStore(path, settings, dtypes=dtypes)
    try:
        await store.__aenter__()
    except Exception as exc:
        await _send(writer, (0, False, _portable(exc), None))
        writer.close()
        return
    await _send(writer, (0, True, None, _counters(store)))
    writes: asyncio.Queue[tuple[int, Any] | None] = asyncio.Queue()

    async def reply(call: int, ok: bool, payload: object) -> None:
        async with lock:
            with contextlib.suppress(ConnectionError, OSError):
                await _send(writer, (call, ok, payload, _counters(store)))

    async def run(call: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method not in METHODS or method == "close":
                raise ValueError(f"the store process has no method {method!r}")
            result = await getattr(store, method)(*args)
        except Exception as exc:
            await reply(call, False, _portable(exc))
        else:
            await reply(call, True, result)

    async def writer_loop() -> None:
        """Batches one after the other, in the order they came."""
        while (item := await writes.get()) is not None:
            await run(item[0], "write_wire", item[1])

    tasks: set[asyncio.Task[None]] = set()
    ordered = asyncio.create_task(writer_loop())
    closing: int | None = None
    try:
        while True:
            try:
                call, method, args = await _receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                break  # the service is gone: close the store and exit
            except Exception:  # a frame that does not unpickle: the link cannot be trusted
                log.exception("bad request from the service: closing the store")
                break
            if method == "close":
                closing = call
                break
            if method == "write_wire":
                writes.put_nowait((call, args))
            else:
                task = asyncio.create_task(run(call, method, tuple(args)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        writes.put_nowait(None)
        await asyncio.gather(ordered, *tasks, return_exceptions=True)
        await store.__aexit__(None, None, None)
        if closing is not None:
            await reply(closing, True, None)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
