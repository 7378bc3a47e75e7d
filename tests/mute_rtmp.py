"""RTMP servers that stop answering at a chosen step, for the end-of-broadcast tests (stdlib threads + restream.rtmp).

``MuteServer(upto="tcp")`` accepts TCP and never reads or answers (a black hole); ``upto="connect"`` completes the
handshake and answers ``connect`` and ``createStream``, then never answers ``publish``. Both keep every accepted
socket open until ``stop()``. Loopback only.
"""

from __future__ import annotations

import socket
import threading

from restream import rtmp


class MuteServer:
    def __init__(self, port: int, upto: str = "tcp") -> None:
        assert upto in ("tcp", "connect")
        self.upto = upto
        self.port = port
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.publishes = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> "MuteServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self._conns:
            c.close()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            self._conns.append(conn)
            if self.upto == "connect":
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            data = b""
            while len(data) < 1537:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(b"\x03" + bytes(1536) + data[1:1537])
            rest = data[1537:]
            while len(rest) < 1536:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                rest += chunk
            rest = rest[1536:]
            parser, out = rtmp.ChunkParser(), rtmp.ChunkWriter()
            while not self._stop.is_set():
                for m in parser.feed(rest):
                    name = rtmp.command_name(m)
                    if name == "connect":
                        conn.sendall(out.write(rtmp.command_message(
                            ["_result", 1.0, {"fmsVer": "mute"}, {"code": "NetConnection.Connect.Success"}])))
                    elif name == "createStream":
                        values = rtmp.command_values(m)
                        conn.sendall(out.write(rtmp.command_message(["_result", values[1], None, 1.0])))
                    elif name == "publish":
                        self.publishes += 1  # and never answered
                rest = conn.recv(65536)
                if not rest:
                    return
        except OSError:
            return
