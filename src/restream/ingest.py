"""The ingest gate of relay mode: where OBS publishes, with the ingest key enforced.

ffmpeg's RTMP listener accepts any stream name (it only warns on a mismatch), so restream puts this gate in front of
it: the publisher connects here; the gate opens a connection to ffmpeg's listener on a private loopback port, passes
the handshake through, and reads the publisher's commands as they pass. The stream name of ``releaseStream``,
``FCPublish`` or ``publish`` must be the ingest key and the ``connect`` app the expected app, or the publisher is cut
off before any media flows (ffmpeg's listener then fails without having opened an output, and restream starts a new
one: the destinations never see a rejected publisher). Once ``publish`` is verified the gate is a plain byte pipe.

One publisher at a time: a second one is refused while the first is live.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from restream import rtmp
from restream.ports import listening

_NAMED = ("releaseStream", "FCPublish", "publish")
_READ = 256 * 1024


@dataclass(frozen=True)
class IngestEvent:
    kind: str  # "publishing" (key verified), "rejected", "ended"
    peer: str
    detail: str | None = None


def check_command(msg: rtmp.Message, app: str, key: str) -> tuple[bool, str | None, bool]:
    """Pure: (ok, problem, publish_verified) for one client->server message."""
    name = rtmp.command_name(msg)
    if name is None:
        return True, None, False
    try:
        values = rtmp.command_values(msg)
    except rtmp.RtmpError:
        return False, "unreadable command", False
    if name == "connect":
        obj = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
        got = str(obj.get("app", "")).strip("/")
        if got.split("?", 1)[0] != app:
            return False, "wrong application name in the server URL", False
        return True, None, False
    if name in _NAMED:
        stream = values[3] if len(values) > 3 and isinstance(values[3], str) else ""
        if not hmac.compare_digest(stream.encode("utf-8", "surrogatepass"), key.encode("utf-8", "surrogatepass")):
            return False, "wrong stream key", False
        return True, None, name == "publish"
    return True, None, False


class IngestGate:
    def __init__(self, host: str, port: int, app: str, key: str, backend_port: int,
                 on_event: Callable[[IngestEvent], None]) -> None:
        self.host, self.port, self.app, self.key = host, port, app.strip("/"), key
        self.backend_port = backend_port
        self.on_event = on_event
        self.busy = False
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        who = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        if self.busy:
            self.on_event(IngestEvent("rejected", who, "another publisher is live"))
            writer.close()
            return
        self.busy = True
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
        try:
            for _ in range(250):  # ffmpeg may be restarting after the previous publisher: wait for its listener
                if listening(self.backend_port):
                    break
                await asyncio.sleep(0.02)
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
            except OSError as exc:
                self.on_event(IngestEvent("rejected", who, f"restream's ffmpeg is not listening ({exc.strerror})"))
                return
            try:
                await self._serve(who, reader, writer, up_reader, up_writer)
            finally:
                up_writer.close()
        finally:
            writer.close()
            self.busy = False
            if task:
                self._tasks.discard(task)

    async def _serve(self, who, reader, writer, up_reader, up_writer) -> None:
        down = asyncio.create_task(_pipe(up_reader, writer))
        try:
            verdict = await self._check(reader, up_writer)
            if verdict is not None:
                self.on_event(IngestEvent("rejected", who, verdict))
                return
            self.on_event(IngestEvent("publishing", who))
            await _pipe(reader, up_writer)
            self.on_event(IngestEvent("ended", who))
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            self.on_event(IngestEvent("ended", who, str(exc) or type(exc).__name__))
        finally:
            down.cancel()

    async def _check(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> str | None:
        """Forward the handshake and the commands up to a verified ``publish``; a problem ends the session."""
        up.write(await reader.readexactly(1 + rtmp.HANDSHAKE_SIZE))  # C0+C1; the publisher then waits for S0-S2
        await up.drain()
        up.write(await reader.readexactly(rtmp.HANDSHAKE_SIZE))  # C2
        parser = rtmp.ChunkParser()
        while True:
            data = await reader.read(_READ)
            if not data:
                return "publisher left before publishing"
            published = False
            for msg in parser.feed(data):
                ok, problem, verified = check_command(msg, self.app, self.key)
                if not ok:
                    return problem
                published = published or verified
            up.write(data)
            await up.drain()
            if published:
                return None


def load_or_create_key(path: Path) -> tuple[str, bool]:
    """The profile's ingest key, made once (random, URL-safe) and kept 0600 beside the profiles."""
    try:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key, False
    except FileNotFoundError:
        pass
    from restream.profile import atomic_write

    key = secrets.token_urlsafe(18)
    atomic_write(path, key + "\n")
    return key, True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(_READ)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass
