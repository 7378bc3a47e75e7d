"""A loopback TCP proxy that injects network faults between a publisher and a real receiver.

Stdlib only, threads only: usable from synchronous pytest tests and from bench scripts::

    proxy = FaultProxy(target_port).start()      # listens on 127.0.0.1:proxy.port
    ...  point ffmpeg at rtmp://127.0.0.1:{proxy.port}/app ...
    proxy.pause(); proxy.resume()                 # stall both directions (TCP back-pressure on the sender)
    proxy.throttle(50_000); proxy.throttle(None)  # bytes/second per direction
    proxy.cut()                                   # close every current connection, keep listening
    proxy.down(); proxy.up()                      # refuse new connections (accept-and-close), listener stays open
    proxy.bytes_forwarded, proxy.connections      # client->server bytes delivered; open connections now
    proxy.stop()

The listening socket is opened once in ``start()`` and closed only by ``stop()``, so nothing else can take the port
while the proxy is "down". Each direction holds at most one chunk (64 KiB, or 1/20 s worth when throttled) and sends
it completely before reading more: buffers are bounded and a stalled side back-pressures the other through TCP.
"""

from __future__ import annotations

import socket
import threading
import time

try:  # run from pytest (tests/ on sys.path) or from the repo root (tests as a namespace package)
    from support import free_port
except ImportError:  # pragma: no cover
    from tests.support import free_port

CHUNK = 64 * 1024


class _Conn:
    """One proxied connection: the accepted client socket and its upstream socket."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.closed = False
        self._pumps_left = 2
        self._lock = threading.Lock()

    def shutdown(self) -> None:
        """Wake both pumps (blocked recv/send return) without closing the fds under them."""
        self.closed = True
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pump_done(self) -> bool:
        """Called by each pump on exit; the last one closes the sockets. True when the connection is gone."""
        with self._lock:
            self._pumps_left -= 1
            last = self._pumps_left == 0
        if last:
            self.closed = True
            self.client.close()
            self.upstream.close()
        return last


class FaultProxy:
    def __init__(self, target_port: int, listen_port: int | None = None, target_host: str = "127.0.0.1",
                 connect_timeout: float = 5.0) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port if listen_port is not None else free_port()
        self.connect_timeout = connect_timeout
        self._cv = threading.Condition()
        self._conns: set[_Conn] = set()
        self._paused = False
        self._down = False
        self._rate: float | None = None
        self._inflight = 0
        self._stopped = False
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._bytes_c2s = 0
        self._bytes_s2c = 0
        self.accepted = 0  # connections forwarded upstream (total)
        self.refused = 0  # connections accepted and closed while down (or whose upstream could not be reached)

    # ----------------------------------------------------------------------------------------------- lifecycle
    def start(self) -> "FaultProxy":
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        lst.settimeout(0.1)
        self._listener = lst
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self.cut()
        deadline = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> "FaultProxy":
        return self.start() if self._listener is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ controls
    def cut(self) -> None:
        """Close every current connection now (both sides see EOF/RST); keep listening."""
        with self._cv:
            conns = list(self._conns)
            self._cv.notify_all()
        for c in conns:
            c.shutdown()

    def down(self) -> None:
        """Refuse new connections (accept, then close at once). Current connections are left alone: ``cut()``."""
        self._down = True

    def up(self) -> None:
        self._down = False

    def pause(self, timeout: float = 2.0) -> None:
        """Stop forwarding in both directions. Returns once no send is in flight, so ``bytes_forwarded`` is
        frozen from here until ``resume()`` (at most one chunk per direction is held, unforwarded)."""
        with self._cv:
            self._paused = True
            self._cv.wait_for(lambda: self._inflight == 0, timeout)

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    def throttle(self, bytes_per_second: float | None) -> None:
        """Limit each direction to ``bytes_per_second`` (None: unlimited)."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be > 0 (use pause() to stop traffic)")
        with self._cv:
            self._rate = bytes_per_second
            self._cv.notify_all()

    # ------------------------------------------------------------------------------------------------- metrics
    @property
    def bytes_forwarded(self) -> int:
        """Bytes delivered client -> server (the publisher's upload)."""
        return self._bytes_c2s

    @property
    def bytes_returned(self) -> int:
        """Bytes delivered server -> client."""
        return self._bytes_s2c

    @property
    def connections(self) -> int:
        """Connections open now."""
        with self._cv:
            return len(self._conns)

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def is_down(self) -> bool:
        return self._down

    # ------------------------------------------------------------------------------------------------ internals
    def _spawn(self, target, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [x for x in self._threads if x.is_alive()]
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopped:
                    return
                time.sleep(0.05)
                continue
            if self._down or self._stopped:
                self.refused += 1
                client.close()
                continue
            client.settimeout(None)
            self._spawn(self._open, "faultproxy-open", client)

    def _open(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError:
            self.refused += 1
            client.close()
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(client, upstream)
        with self._cv:
            if self._stopped or self._down:
                self.refused += 1
                client.close()
                upstream.close()
                return
            self._conns.add(conn)
            self.accepted += 1
        self._spawn(self._pump, "faultproxy-c2s", conn, client, upstream, True)
        self._spawn(self._pump, "faultproxy-s2c", conn, upstream, client, False)

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, c2s: bool) -> None:
        next_send = 0.0  # throttling: earliest time the next chunk may go
        end_all = True  # an error, a cut or the server closing ends the connection; a client EOF half-closes it
        try:
            while not conn.closed:
                with self._cv:
                    while self._paused and not conn.closed and not self._stopped:
                        self._cv.wait(0.2)
                    rate = self._rate
                size = CHUNK if rate is None else max(1, min(CHUNK, int(rate / 20)))
                data = src.recv(size)
                if not data:
                    if c2s:
                        end_all = False
                        dst.shutdown(socket.SHUT_WR)
                    return
                with self._cv:  # data read while paused / throttled waits here (one chunk at most)
                    while True:
                        if conn.closed or self._stopped:
                            return
                        if self._paused:
                            self._cv.wait(0.2)
                            continue
                        rate = self._rate
                        now = time.monotonic()
                        if rate is None or next_send <= now:
                            break
                        self._cv.wait(min(0.2, next_send - now))
                    self._inflight += 1
                sent = False
                try:
                    dst.sendall(data)
                    sent = True
                finally:
                    with self._cv:
                        if sent and c2s:
                            self._bytes_c2s += len(data)
                        elif sent:
                            self._bytes_s2c += len(data)
                        self._inflight -= 1
                        self._cv.notify_all()
                if rate is not None:
                    next_send = max(next_send, now) + len(data) / rate
        except OSError:
            pass
        finally:
            if end_all:
                conn.shutdown()
            if conn.pump_done():
                with self._cv:
                    self._conns.discard(conn)
                    self._cv.notify_all()
