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
from collections.abc import Callable, Mapping, Sequence
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


async def send_frame(writer: asyncio.StreamWriter, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LEN.pack(len(data)))
    writer.write(data)
    await writer.drain()


async def receive_frame(reader: asyncio.StreamReader) -> Any:
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


async def spawn_linked(
    target: Callable[..., None],
    args: tuple[Any, ...],
    sock: Path,
    name: str,
    timeout_s: float = START_TIMEOUT_S,
) -> tuple[Any, asyncio.StreamReader, asyncio.StreamWriter]:
    """Start ``target(str(sock), *args)`` in a spawned process and wait until it connects to
    ``sock`` (in a private folder of the caller's): the process and the link to it. Only the
    first connection is heard, and the listener closes once it came. If the process exits or
    does not connect within ``timeout_s`` (StoreProcessError), or the wait is cancelled, the
    process is killed before this returns."""
    joined: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
    joined = asyncio.get_running_loop().create_future()

    def on_connect(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if joined.done():
            w.close()  # only the one process started here is heard
        else:
            joined.set_result((r, w))

    server = await asyncio.start_unix_server(on_connect, path=str(sock))
    proc = multiprocessing.get_context("spawn").Process(
        target=target, args=(str(sock), *args), name=name, daemon=True
    )
    try:
        await asyncio.to_thread(proc.start)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not joined.done():
            if not proc.is_alive():
                raise StoreProcessError(f"{name} exited (code {proc.exitcode}) before it connected")
            if loop.time() > deadline:
                raise StoreProcessError(f"{name} did not connect in {timeout_s:g} s")
            await asyncio.wait({joined}, timeout=0.05)
    except BaseException:
        if proc.pid is not None and proc.is_alive():
            proc.kill()
            await asyncio.to_thread(proc.join, 5)
        raise
    finally:
        server.close()
    reader, writer = joined.result()
    return proc, reader, writer


class _Caller:
    """The requesting end of a link to the store process: calls are numbered frames, each
    answered by a reply with its number, in any order. Once the link is gone (``fail``),
    every waiting and later call raises why. Shared by the service (``StoreProcess``) and the
    ingest workers (``IngestWriter``), which differ only in what they make of the link's end."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_counters: Callable[[Mapping[str, Any] | None], None] | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.gone: StoreProcessError | None = None
        self._on_counters = on_counters
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._ids = 0

    def fail(self, error: StoreProcessError) -> None:
        if self.gone is None:
            self.gone = error
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(self.gone)

    async def call(self, method: str, *args: Any) -> Any:
        if self.gone is not None:
            raise self.gone
        self._ids += 1
        call = self._ids
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[call] = fut
        try:
            await send_frame(self.writer, (call, method, args))
        except (ConnectionError, OSError) as exc:
            self._waiting.pop(call, None)
            self.fail(StoreProcessError(f"the store process is unreachable: {exc}"))
            raise StoreProcessError(f"the store process is unreachable: {exc}") from None
        except BaseException:  # not sent (an argument that does not pickle): nothing waits
            self._waiting.pop(call, None)
            raise
        return await fut

    async def dispatch(self) -> None:
        """Hand each reply to its call until the link ends, raising why it ended: the
        stream's end, or a frame that does not unpickle."""
        while True:
            call, ok, payload, counters = await receive_frame(self.reader)
            if self._on_counters is not None:
                self._on_counters(counters)
            fut = self._waiting.pop(call, None)
            if fut is None or fut.done():
                continue
            if ok:
                fut.set_result(payload)
            else:
                fut.set_exception(payload)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


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
        self._link: _Caller | None = None
        self._replies: asyncio.Task[None] | None = None
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
        self._proc, reader, writer = await spawn_linked(
            serve,
            (str(self.path), self.settings, self._dtypes, str(self.ingest_path)),
            self._folder / "store.sock",
            "flytower-store",
        )
        self.pid = self._proc.pid
        self._link = _Caller(reader, writer, self._mirror)
        try:
            ready = await asyncio.wait_for(receive_frame(reader), START_TIMEOUT_S)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError) as exc:
            raise StoreProcessError(f"the store process did not open {self.path}: {exc}") from None
        _, ok, payload, counters = ready
        if not ok:
            raise payload
        self._mirror(counters)
        self._replies = asyncio.create_task(self._read_replies(), name="store-process-replies")

    @property
    def ingest_path(self) -> Path:
        """Where the store process takes batches from ingest workers (``IngestWriter``)."""
        assert self._folder is not None, "the store is not open"
        return self._folder / "ingest.sock"

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._link is not None and self._link.gone is None:
                self._closing = True
                with contextlib.suppress(StoreProcessError):
                    await asyncio.wait_for(self._call("close"), CLOSE_TIMEOUT_S)
        finally:
            await self._end()

    async def _end(self) -> None:
        """Close the link, reap the process (killed if it does not exit), remove the folder."""
        if self._link is not None:
            await self._link.close()
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
        if self._link is not None:
            self._link.fail(error)

    async def _read_replies(self) -> None:
        assert self._link is not None
        try:
            await self._link.dispatch()
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
            self._link.writer.close()

    async def _call(self, method: str, *args: Any) -> Any:
        if self._link is None:
            raise StoreProcessError("the store is not open")
        return await self._link.call(method, *args)

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


def serve(
    sock: str,
    path: str,
    settings: StoreSettings,
    dtypes: dict[Any, ValueType],
    ingest_sock: str | None = None,
) -> None:
    """The store process's main: serve one service's connection until it closes, and the
    ingest workers' connections on ``ingest_sock`` meanwhile."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when the store closes
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s store-process %(name)s: %(message)s"
    )
    asyncio.run(_serve(sock, Path(path), settings, dtypes, ingest_sock))


def _counters(store: TelemetryStore) -> dict[str, Any]:
    return {
        "written": store.written,
        "rejected": dict(store.rejected),
        "flagged": dict(store.flagged),
        "rolled_up": store.rolled_up,
        "pruned": dict(store.pruned),
    }


class _Peer:
    """One connection to the store process: its replies are whole frames, one at a time."""

    def __init__(self, writer: asyncio.StreamWriter, counters: bool) -> None:
        self.writer = writer
        self.counters = counters  # the service mirrors them; an ingest worker does not
        self.lock = asyncio.Lock()

    async def reply(self, store: TelemetryStore, call: int, ok: bool, payload: object) -> None:
        async with self.lock:
            with contextlib.suppress(ConnectionError, OSError):
                counters = _counters(store) if self.counters else None
                await send_frame(self.writer, (call, ok, payload, counters))


async def _serve(
    sock: str,
    path: Path,
    settings: StoreSettings,
    dtypes: dict[Any, ValueType],
    ingest_sock: str | None,
) -> None:
    reader, writer = await asyncio.open_unix_connection(sock)
    service = _Peer(writer, counters=True)
    store = TelemetryStore(path, settings, dtypes=dtypes)
    try:
        await store.__aenter__()
    except Exception as exc:
        await send_frame(writer, (0, False, _portable(exc), None))
        writer.close()
        return
    writes: asyncio.Queue[tuple[_Peer, int, Any] | None] = asyncio.Queue()

    async def run(peer: _Peer, call: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method not in METHODS or method == "close":
                raise ValueError(f"the store process has no method {method!r}")
            result = await getattr(store, method)(*args)
        except Exception as exc:
            await peer.reply(store, call, False, _portable(exc))
        else:
            await peer.reply(store, call, True, result)

    async def writer_loop() -> None:
        """Batches one after the other, in the order they came (per connection)."""
        while (item := await writes.get()) is not None:
            await run(item[0], item[1], "write_wire", item[2])

    async def ingest(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """An ingest worker: it may only write. A frame that does not unpickle, or is not a
        write, ends its connection (it is told why), never the store."""
        peer = _Peer(w, counters=False)
        try:
            while True:
                call, method, args = await receive_frame(r)
                if method != "write_wire":
                    await peer.reply(
                        store, call, False, ValueError(f"an ingest link may not call {method!r}")
                    )
                    break
                writes.put_nowait((peer, call, args))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the worker is gone; what it had sent is written
        except Exception as exc:
            log.warning("bad frame from an ingest worker: %s; closing its link", exc)
        finally:
            w.close()

    tasks: set[asyncio.Task[None]] = set()
    ordered = asyncio.create_task(writer_loop())
    workers = (
        await asyncio.start_unix_server(ingest, path=ingest_sock)
        if ingest_sock is not None
        else None
    )
    # Ready only now: an ingest worker started once the store is open finds its socket.
    await send_frame(writer, (0, True, None, _counters(store)))
    closing: int | None = None
    try:
        while True:
            try:
                call, method, args = await receive_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                break  # the service is gone: close the store and exit
            except Exception:  # a frame that does not unpickle: the link cannot be trusted
                log.exception("bad request from the service: closing the store")
                break
            if method == "close":
                closing = call
                break
            if method == "write_wire":
                writes.put_nowait((service, call, args))
            else:
                task = asyncio.create_task(run(service, call, method, tuple(args)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
    finally:
        if workers is not None:
            workers.close()  # no new worker; batches already queued are written below
        writes.put_nowait(None)
        await asyncio.gather(ordered, *tasks, return_exceptions=True)
        await store.__aexit__(None, None, None)
        if closing is not None:
            await service.reply(store, closing, True, None)
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class IngestWriter:
    """An ingest worker's link to the store process (``StoreProcess.ingest_path``): it can only
    write, and ``write`` returns once the batch is committed (durable), like the service's.
    Batches of one writer are written in the order sent. ``StoreProcessError`` once the link
    is gone (the store closed or died)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._link = _Caller(reader, writer)
        self._replies = asyncio.create_task(self._read_replies(), name="ingest-writer-replies")

    @classmethod
    async def connect(cls, path: str | Path) -> IngestWriter:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def _read_replies(self) -> None:
        why = "the store closed the link"
        try:
            await self._link.dispatch()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception as exc:
            why = f"bad reply from the store process: {exc}"
        self._link.fail(StoreProcessError(why))

    async def write(self, readings: Sequence[Reading]) -> int:
        if not readings:
            return 0
        return int(await self._link.call("write_wire", to_wire(readings)))

    async def close(self) -> None:
        await self._link.close()
        self._replies.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._replies
