"""Can this machine reach its destinations? DNS, TCP, TLS (rtmps), the RTMP handshake and ``connect``, timed, all
in parallel.

Never publishes: after the handshake the check sends one ``connect`` (the server URL's app and tcUrl, which carry no
key), waits for its answer and closes; no ``releaseStream``, ``FCPublish`` or ``publish``, and no stream key is ever
sent or even read. A server that accepts TCP but leaves the handshake or ``connect`` unanswered (a black hole) is
unreachable. SRT runs over UDP, which cannot be probed without speaking SRT: SRT destinations get a DNS lookup
only, and the result says so.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}
RTMP_HANDSHAKE_SIZE = 1536
RTMP_STEP_LIMIT = 5.0  # an RTMP step (handshake, connect) left unanswered this long fails


@dataclass
class Step:
    name: str  # dns | tcp | tls | rtmp (the handshake) | connect
    ok: bool | None = None  # None: not run (an earlier step failed, or not applicable)
    ms: float | None = None
    detail: str = ""
    required: bool = True


@dataclass
class Result:
    name: str
    scheme: str
    host: str
    port: int | None
    steps: list[Step] = field(default_factory=list)
    note: str = ""
    ingest: str = "primary"  # a destination with a backup ingest is checked twice: "primary" and "backup"

    @property
    def reachable(self) -> bool:
        """Every required step that applies succeeded (TCP, plus TLS for rtmps; DNS only for SRT)."""
        return bool(self.steps) and all(s.ok for s in self.steps if s.required)

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)

    def to_dict(self) -> dict:
        return {"name": self.name, "ingest": self.ingest, "scheme": self.scheme, "host": self.host,
                "port": self.port, "reachable": self.reachable, "note": self.note, "steps": [asdict(s) for s in self.steps]}


@dataclass(frozen=True)
class Probe:
    """What to check for one destination (no key: the check never needs one)."""

    name: str
    server_url: str
    ca_file: str | None = None
    name_in_url: bool = False  # no separate key: the URL's last path element is the stream name (never sent)
    ingest: str = "primary"  # or "backup": the destination's backup_url


def _endpoint(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, parts.hostname or "", port or DEFAULT_PORTS.get(scheme)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve: {exc.strerror or exc}"
    if isinstance(exc, (asyncio.IncompleteReadError, EOFError)):
        return "connection closed by the server"
    if isinstance(exc, OSError):
        return os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc) or type(exc).__name__)
    return str(exc) or type(exc).__name__


async def _resolve(host: str, port: int | None, kind: int) -> list[tuple]:
    """getaddrinfo in a daemon thread: a hung resolver must not keep the process alive past the timeout."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def deliver(exc: BaseException | None, res: list | None) -> None:
        if not fut.done():
            fut.set_exception(exc) if exc is not None else fut.set_result(res)

    def work() -> None:
        try:
            res, exc = socket.getaddrinfo(host, port, type=kind), None
        except Exception as error:  # delivered to the awaiting coroutine
            res, exc = None, error
        try:
            loop.call_soon_threadsafe(deliver, exc, res)
        except RuntimeError:  # the check is over and its loop closed
            pass

    threading.Thread(target=work, name=f"resolve {host}", daemon=True).start()
    return await fut


async def _timed(step: Step, coro, deadline: float, limit: float | None = None):
    """Run one step with what is left of the overall time (at most ``limit``); fill in ok, ms and detail."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    left = deadline - loop.time()
    if limit is not None:
        left = min(left, limit)
    try:
        if left <= 0:
            raise asyncio.TimeoutError
        value = await asyncio.wait_for(coro, left)
    except asyncio.TimeoutError:
        step.ok, step.detail = False, "timed out"
        return None
    except Exception as exc:
        step.ok, step.detail = False, _describe(exc)
        return None
    finally:
        step.ms = round((time.perf_counter() - start) * 1000, 1)
        if asyncio.iscoroutine(coro):
            coro.close()
    step.ok = True
    return value if value is not None else True


async def probe_one(p: Probe, deadline: float) -> Result:
    scheme, host, port = _endpoint(p.server_url)
    res = Result(p.name, scheme, host, port, ingest=p.ingest)
    srt = scheme == "srt"
    dns = Step("dns")
    res.steps.append(dns)
    addrs = await _timed(dns, _resolve(host, port, socket.SOCK_DGRAM if srt else socket.SOCK_STREAM), deadline)
    if addrs:
        dns.detail = ", ".join(dict.fromkeys(a[4][0] for a in addrs))
    if srt:
        res.note = "SRT runs over UDP: only DNS was checked, not whether the server answers"
        return res
    tcp = Step("tcp")
    tls = Step("tls") if scheme == "rtmps" else None
    rtmp = Step("rtmp")
    connect_step = Step("connect")
    res.steps += [s for s in (tcp, tls, rtmp, connect_step) if s is not None]
    if not addrs:
        return res

    async def connect():
        last: BaseException | None = None
        for *_, sockaddr in addrs:  # every address in resolver order, like a real client
            try:
                conn = await asyncio.open_connection(sockaddr[0], port)
                tcp.detail = f"{sockaddr[0]}:{port}"
                return conn
            except OSError as exc:
                last = exc
        raise last or OSError("no address")

    conn = await _timed(tcp, connect(), deadline)
    if not conn:
        return res
    reader, writer = conn
    try:
        if tls is not None:
            async def handshake():
                ctx = ssl.create_default_context(cafile=p.ca_file or None)
                await writer.start_tls(ctx, server_hostname=host)
                obj = writer.get_extra_info("ssl_object")
                return obj.version() if obj else "ok"

            version = await _timed(tls, handshake(), deadline)
            if not version:
                return res
            tls.detail = str(version) + (f" (CA {p.ca_file})" if p.ca_file else " (system CAs)")

        async def rtmp_handshake():
            # C0 (version 3) + C1 (time, zero, random); S0+S1+S2 back; C2 echoes S1.
            writer.write(b"\x03" + bytes(8) + os.urandom(RTMP_HANDSHAKE_SIZE - 8))
            await writer.drain()
            try:
                data = await reader.readexactly(1 + 2 * RTMP_HANDSHAKE_SIZE)
            except asyncio.IncompleteReadError:
                raise EOFError from None
            if data[0] != 3:
                raise ValueError(f"not an RTMP server (S0 version {data[0]})")
            writer.write(data[1:1 + RTMP_HANDSHAKE_SIZE])
            await writer.drain()
            return "handshake completed"

        answer = await _timed(rtmp, rtmp_handshake(), deadline, RTMP_STEP_LIMIT)
        if not answer:
            if rtmp.detail == "timed out":
                rtmp.detail = f"the server did not answer the RTMP handshake within {rtmp.ms / 1000:.0f} s"
            return res
        rtmp.detail = answer
        url = p.server_url
        if p.name_in_url:
            head, _, _ = urlsplit(url)._replace(query="").geturl().rstrip("/").rpartition("/")
            url = head
        verdict = await _timed(connect_step, _rtmp_connect(reader, writer, url), deadline,
                               RTMP_STEP_LIMIT)
        if verdict:
            connect_step.detail = verdict
        elif connect_step.detail == "timed out":
            connect_step.detail = (f"the server completed the handshake but never answered `connect` within "
                                   f"{connect_step.ms / 1000:.0f} s")
    finally:
        writer.transport.abort()
    return res


async def _rtmp_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: str) -> str:
    """Send ``connect`` (app and tcUrl only: no key) and read the server's answer; never publish."""
    from restream import rtmp

    try:
        target = rtmp.parse_url(url)
    except ValueError as exc:
        raise ValueError(f"bad server URL: {exc}") from None
    msg = rtmp.command_message(["connect", 1.0, {"app": target.app, "type": "nonprivate",
                                                  "flashVer": "FMLE/3.0 (compatible; restream check)",
                                                  "tcUrl": target.tcurl}])
    writer.write(rtmp.serialize(msg, rtmp.DEFAULT_CHUNK_SIZE))
    await writer.drain()
    parser = rtmp.ChunkParser()
    while True:
        data = await reader.read(65536)
        if not data:
            raise EOFError
        for m in parser.feed(data):
            name = rtmp.command_name(m)
            if name == "_result":
                return "connect accepted"
            if name == "_error":
                values = rtmp.command_values(m)
                info = next((v for v in values[2:] if isinstance(v, dict)), {})
                desc = " ".join(str(info.get(k, "")) for k in ("code", "description")).strip()
                raise ValueError(f"the server refused `connect`{': ' + desc[:200] if desc else ''}")


async def probe_all(probes: list[Probe], timeout: float) -> list[Result]:
    """Check every destination in parallel; the whole check ends within ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    return list(await asyncio.gather(*(probe_one(p, deadline) for p in probes)))


def run(probes: list[Probe], timeout: float) -> list[Result]:
    return asyncio.run(probe_all(probes, timeout))
