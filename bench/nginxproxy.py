"""nginx with a token check in front of a bare engine: the reference proxy of issue 8, measured here.

Why in the bench: "an nginx proxy with a token check reaches about 0.99x" is the yardstick
the targets were set against. Run side by side with chromaguard on the same machine, it
says how much of a ratio is any proxy's on this machine and how much is ours. nginx is
optional (``apt-get install nginx-light``); without it the row is left out.

The config is what one would write for this: one worker (chromaguard is one event loop),
kept-alive upstream connections, bodies held in memory, no access log.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tcpforward import ProxyProcess

_CONFIG = """\
worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 16m;
    # The token as Chroma's clients send it: X-Chroma-Token, or Authorization: Bearer.
    map $http_x_chroma_token $by_header {{ default 0; "{token}" 1; }}
    map $http_authorization $token_ok {{ default $by_header; "Bearer {token}" 1; }}
    upstream engine {{
        server 127.0.0.1:{upstream};
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl};
{ssl_lines}        location / {{
            if ($token_ok = 0) {{ return 401; }}
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def available() -> bool:
    return shutil.which("nginx") is not None


class NginxProxy(ProxyProcess):
    """nginx as a child process in front of ``engine``."""

    def __init__(self, engine: Any, token: str, tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate, key) to serve HTTPS, TLS 1.2 and 1.3 as chromaguard offers them."""
        super().__init__(engine)
        self.tls = tls
        self._tmp = tempfile.TemporaryDirectory(prefix="cg-nginx-")
        root = Path(self._tmp.name)
        config = root / "nginx.conf"
        ssl_lines = "" if tls is None else (
            f"        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;\n")
        config.write_text(_CONFIG.format(root=root, upstream=engine.port, port=self.port, token=token,
                                         ssl=" ssl" if tls else "", ssl_lines=ssl_lines))
        self.proc = subprocess.Popen(["nginx", "-p", str(root), "-c", str(config), "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait(token)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _wait(self, token: str) -> None:
        import ssl

        deadline = time.monotonic() + 10
        request = urllib.request.Request(self.url + "/api/v2/heartbeat", headers={"x-chroma-token": token})
        unverified = None
        if self.tls:  # a readiness poll on loopback: the certificate is the bench's own
            unverified = ssl.create_default_context()
            unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode(errors='replace')}")  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(request, timeout=1, context=unverified) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)

    def close(self) -> None:
        super().close()
        self._tmp.cleanup()
