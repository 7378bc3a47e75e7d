"""A private nginx + nginx-rtmp for interop tests: real RTMP ingest, key checking, recordings, stats, RTMPS.

::

    ngx = NginxRtmp(tmp_path, apps=["a1", "a2"], expected_keys={"a1": "k1"}, tls=True).start()
    ngx.rtmp_url("a1")         # rtmp://127.0.0.1:PORT/a1
    ngx.rtmps_url("a1")        # rtmps://localhost:TLSPORT/a1  (tests/data/cert.pem is valid for localhost)
    ngx.publish_attempts       # [PublishAttempt(app, name, key, accepted, fields, body), ...]
    ngx.recordings("a1")       # [Path(.../rec/a1/<name>.flv), ...]; ngx.recording("a1"[, name]) -> one Path
    ngx.stat()                 # {"a1": {"k1": {"bytes_in": ..., "video_codec": "H264", ...}}}
    ngx.restart(); ngx.stop()

nginx runs in the foreground (``daemon off; master_process off;``) as a child in its own session, every path
(pid, logs, temp dirs, recordings) lives under ``tmpdir``, and every port is on 127.0.0.1, picked with
``support.free_port()``. ``on_publish`` goes to a tiny in-process HTTP server (a thread) which answers 200 only
when the published key is exactly the app's expected key and 403 otherwise; apps with no expected key accept any
name. The key is compared as nginx-rtmp sees it (see ``PublishAttempt.key``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:
    from support import free_port, wait_listening
except ImportError:  # pragma: no cover
    from tests.support import free_port, wait_listening

MODULE_DIR = Path("/usr/lib/nginx/modules")
RTMP_MODULE = MODULE_DIR / "ngx_rtmp_module.so"
STREAM_MODULE = MODULE_DIR / "ngx_stream_module.so"
DATA = Path(__file__).resolve().parent / "data"
CERT = DATA / "cert.pem"
KEY = DATA / "key.pem"

INSTALL = "run `apt-get install nginx libnginx-mod-rtmp libnginx-mod-stream` — CI installs it"
INSTALL_HINT = "nginx or one of its modules (rtmp, stream) is not installed: " + INSTALL


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def missing_parts(tls: bool = True) -> list[str]:
    """What is missing for the interop tests: ``nginx``, ``libnginx-mod-rtmp``, ``libnginx-mod-stream`` (TLS)."""
    missing = [] if nginx_binary() else ["nginx"]
    if not RTMP_MODULE.is_file():
        missing.append(f"libnginx-mod-rtmp ({RTMP_MODULE})")
    if tls and not STREAM_MODULE.is_file():
        missing.append(f"libnginx-mod-stream ({STREAM_MODULE})")
    return missing


def install_hint(tls: bool = True) -> str:
    """Names exactly what is missing (the stream module alone is enough to skip the RTMPS tests)."""
    missing = missing_parts(tls)
    if not missing:
        return INSTALL_HINT
    return f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: {INSTALL}"


def nginx_available(tls: bool = True) -> bool:
    """True when the nginx binary and the rtmp module (and, for ``tls``, the stream module) are installed."""
    return not missing_parts(tls)


def require_nginx(tls: bool = True) -> None:
    """``pytest.skip`` LOUDLY when nginx-rtmp is missing (never a silent pass)."""
    if not nginx_available(tls):
        import pytest

        if os.environ.get("RESTREAM_REQUIRE_INTEROP"):  # CI installs nginx: a missing one there is a failure
            pytest.fail("RESTREAM_REQUIRE_INTEROP is set but " + install_hint(tls))
        pytest.skip(install_hint(tls))


@dataclass(frozen=True)
class PublishAttempt:
    """One ``on_publish`` call from nginx-rtmp.

    ``name`` is the form field ``name`` URL-decoded. nginx-rtmp cuts a published stream name at the first ``?``
    and appends the rest to the notify body *verbatim* (unescaped) as extra form fields, so ``key`` rebuilds the
    name the publisher sent: ``name`` + ``?`` + the raw text after ``&type=…&`` (when there is any).
    ``body`` is the raw POST body as received.
    """

    app: str
    name: str
    key: str
    accepted: bool
    fields: dict[str, list[str]]
    body: str


def _key_from_body(body: str, fields: dict[str, list[str]]) -> str:
    name = fields.get("name", [""])[0]
    typ = fields.get("type", [None])[0]
    if typ is not None:
        marker = "&type=" + urllib.parse.quote(typ, safe="") + "&"
        idx = body.find(marker)
        if idx < 0:
            marker = "&type=" + typ + "&"
            idx = body.find(marker)
        if idx >= 0:
            return name + "?" + body[idx + len(marker):]
    return name


class _Callback(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, owner: "NginxRtmp") -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Callback

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "surrogateescape")
        fields = urllib.parse.parse_qs(body, keep_blank_values=True)
        owner = self.server.owner
        call = fields.get("call", [""])[0]
        status = 200
        if self.path.startswith("/on_publish") or call == "publish":
            app = fields.get("app", [""])[0]
            name = fields.get("name", [""])[0]
            key = _key_from_body(body, fields)
            expected = owner.expected_keys.get(app)
            accepted = expected is None or key == expected
            with owner._lock:
                owner.publish_attempts.append(PublishAttempt(app, name, key, accepted, fields, body))
            status = 200 if accepted else 403
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:  # keep keys out of the test output
        pass


@dataclass
class NginxRtmp:
    tmpdir: Path
    apps: list[str] = field(default_factory=lambda: [f"a{i}" for i in range(1, 6)])
    expected_keys: dict[str, str] = field(default_factory=dict)
    tls: bool = True
    cert: Path = CERT
    key: Path = KEY

    def __post_init__(self) -> None:
        self.tmpdir = Path(self.tmpdir) / "nginx"
        self.rtmp_port = free_port()
        self.http_port = free_port()
        self.callback_port = free_port()
        self.tls_port = free_port() if self.tls else None
        self.proc: subprocess.Popen | None = None
        self.publish_attempts: list[PublishAttempt] = []
        self._lock = threading.Lock()
        self._callback: _Callback | None = None
        self._callback_thread: threading.Thread | None = None
        self.conf = self.tmpdir / "nginx.conf"
        self.error_log = self.tmpdir / "logs" / "error.log"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an env proxy

    # --------------------------------------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 10.0) -> "NginxRtmp":
        if not nginx_available(self.tls):
            raise RuntimeError(install_hint(self.tls))
        if self._callback is None:
            self._callback = _Callback(self.callback_port, self)
            self._callback_thread = threading.Thread(target=self._callback.serve_forever,
                                                     name="nginx-on_publish", daemon=True)
            self._callback_thread.start()
        for sub in ("logs", "tmp", "rec", *(f"rec/{a}" for a in self.apps)):
            (self.tmpdir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._config())
        log = open(self.tmpdir / "logs" / "stderr.log", "ab")
        self.proc = subprocess.Popen(
            [nginx_binary(), "-p", str(self.tmpdir) + "/", "-c", str(self.conf), "-e", str(self.error_log)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        try:
            for port in (self.rtmp_port, self.http_port, self.tls_port):
                if port is not None:
                    wait_listening(port, timeout, proc=self.proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"nginx did not start: {exc}\n{self.log_text()[-3000:]}") from exc
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stop nginx (SIGQUIT = graceful, then SIGTERM, then SIGKILL) and the on_publish server."""
        rc = self._stop_nginx(timeout)
        if self._callback is not None:
            self._callback.shutdown()
            self._callback.server_close()
            self._callback = None
        return rc

    def restart(self, timeout: float = 10.0) -> "NginxRtmp":
        """A new nginx process on the same ports and config (the on_publish server and its record stay)."""
        self._stop_nginx()
        return self.start(timeout)

    def _stop_nginx(self, timeout: float = 5.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        for sig in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                continue
        proc.wait()
        return proc.returncode

    def __enter__(self) -> "NginxRtmp":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def rtmp_url(self, app: str) -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{app}"

    def rtmps_url(self, app: str) -> str:
        if self.tls_port is None:
            raise RuntimeError("NginxRtmp(tls=False) has no RTMPS front")
        return f"rtmps://localhost:{self.tls_port}/{app}"

    def record_dir(self, app: str) -> Path:
        return self.tmpdir / "rec" / app

    def recordings(self, app: str) -> list[Path]:
        return sorted(self.record_dir(app).glob("*.flv"))

    def recording(self, app: str, name: str | None = None) -> Path:
        """The recording of ``name`` in ``app`` (or the only recording there). nginx-rtmp names the file after
        the stream name cut at ``?`` and percent-encoded (``a b`` -> ``a%20b.flv``).
        AssertionError if there is no such file (or, without ``name``, not exactly one)."""
        found = self.recordings(app)
        if name is not None:
            stem = name.split("?", 1)[0]
            found = [p for p in found if urllib.parse.unquote(p.stem) == stem]
        assert len(found) == 1, f"expected one recording in {self.record_dir(app)}, found {found}"
        return found[0]

    def stat_xml(self) -> str:
        with self._opener.open(f"http://127.0.0.1:{self.http_port}/stat", timeout=5) as resp:
            return resp.read().decode("utf-8", "replace")

    def stat(self) -> dict[str, dict[str, dict]]:
        """``{app: {stream_name: {bytes_in, bytes_out, bw_in, time_ms, publishing, clients, video_codec,
        width, height, frame_rate, audio_codec, sample_rate, channels}}}`` from ``rtmp_stat all``."""
        root = ET.fromstring(self.stat_xml())
        out: dict[str, dict[str, dict]] = {}
        for app in root.iter("application"):
            streams = out.setdefault(app.findtext("name") or "", {})
            for st in app.iter("stream"):
                def num(path: str, el=st) -> int | None:
                    text = el.findtext(path)
                    try:
                        return int(text) if text not in (None, "") else None
                    except ValueError:
                        return None
                streams[st.findtext("name") or ""] = {
                    "bytes_in": num("bytes_in"), "bytes_out": num("bytes_out"), "bw_in": num("bw_in"),
                    "time_ms": num("time"), "publishing": st.find("publishing") is not None,
                    "clients": num("nclients"),
                    "video_codec": st.findtext("meta/video/codec"), "width": num("meta/video/width"),
                    "height": num("meta/video/height"), "frame_rate": num("meta/video/frame_rate"),
                    "audio_codec": st.findtext("meta/audio/codec"),
                    "sample_rate": num("meta/audio/sample_rate"), "channels": num("meta/audio/channels"),
                }
        return out

    def publishing(self, app: str) -> list[str]:
        """Names publishing to ``app`` right now."""
        return [n for n, s in self.stat().get(app, {}).items() if s["publishing"]]

    def attempts(self, app: str) -> list[PublishAttempt]:
        with self._lock:
            return [a for a in self.publish_attempts if a.app == app]

    def log_text(self) -> str:
        parts = []
        for p in (self.error_log, self.tmpdir / "logs" / "stderr.log"):
            try:
                parts.append(p.read_text(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts)

    # ------------------------------------------------------------------------------------------------- config
    def _config(self) -> str:
        t = self.tmpdir
        apps = "\n".join(
            f"""        application {app} {{
            live on;
            record all;
            record_path {t}/rec/{app};
            record_unique off;
            on_publish http://127.0.0.1:{self.callback_port}/on_publish;
        }}""" for app in self.apps)
        stream = ""
        if self.tls:
            stream = f"""
stream {{
    server {{
        listen 127.0.0.1:{self.tls_port} ssl;
        ssl_certificate {Path(self.cert).resolve()};
        ssl_certificate_key {Path(self.key).resolve()};
        proxy_pass 127.0.0.1:{self.rtmp_port};
    }}
}}"""
        return f"""# generated by tests/nginx.py
load_module {RTMP_MODULE};
{f"load_module {STREAM_MODULE};" if self.tls else ""}
daemon off;
master_process off;
worker_processes 1;
pid {t}/nginx.pid;
error_log {self.error_log} info;
events {{ worker_connections 256; }}

rtmp {{
    server {{
        listen 127.0.0.1:{self.rtmp_port};
        chunk_size 4096;
        notify_method post;
{apps}
    }}
}}

http {{
    access_log {t}/logs/access.log;
    client_body_temp_path {t}/tmp/client_body;
    proxy_temp_path {t}/tmp/proxy;
    fastcgi_temp_path {t}/tmp/fastcgi;
    uwsgi_temp_path {t}/tmp/uwsgi;
    scgi_temp_path {t}/tmp/scgi;
    server {{
        listen 127.0.0.1:{self.http_port};
        location /stat {{ rtmp_stat all; }}
    }}
}}
{stream}
"""
