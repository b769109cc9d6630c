"""HTTPS on the front door: the official client over TLS, what plain HTTP and old TLS get, a
certificate rotated under load (open connections kept), half a rotation, client certificates,
and our own tools (health, status, backup) speaking HTTPS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import chromadb
import httpx
import pytest
from chromadb.config import Settings
from support.procs import Guard, cli, free_port, read_head, wait_http
from support.tls import Authority, Issued, served_serial


def _place(issued: Issued, live: Path) -> None:
    """Install a certificate as a rotation does: each file replaced whole (write, then rename)."""
    for src, name in ((issued.cert, "tls.crt"), (issued.key, "tls.key")):
        temp = live / f".{name}.new"
        temp.write_bytes(src.read_bytes())
        os.replace(temp, live / name)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_guard(ca: Authority, tmp_path_factory: pytest.TempPathFactory):
    live = tmp_path_factory.mktemp("live")
    _place(ca.issue("chromaguard", "first"), live)
    env = {"CHROMAGUARD_SSL_CERTFILE": str(live / "tls.crt"), "CHROMAGUARD_SSL_KEYFILE": str(live / "tls.key")}
    with Guard(env=env, ca=ca.cert) as g:
        g.live = live  # type: ignore[attr-defined]
        yield g


def _wait_serial(g: Guard, ca: Authority, serial: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while served_serial("127.0.0.1", g.port, ca.cert) != serial:
        assert time.monotonic() < deadline, f"the new certificate was not served within {timeout}s:\n{g.log[-2000:]}"
        time.sleep(0.1)


def test_the_official_client_works_over_https(tls_guard: Guard, ca: Authority) -> None:
    client = chromadb.HttpClient(host="127.0.0.1", port=tls_guard.port, ssl=True,
                                 settings=Settings(anonymized_telemetry=False, chroma_server_ssl_verify=str(ca.cert)))
    assert client.heartbeat() > 0
    col = client.get_or_create_collection("over-tls", embedding_function=None)
    col.add(ids=["a", "b"], embeddings=[[1.0, 0.0], [0.0, 1.0]], documents=["one", "two"])
    got = col.query(query_embeddings=[[1.0, 0.1]], n_results=1)
    assert got["ids"] == [["a"]] and got["documents"] == [["one"]]
    assert "serving Chroma" in tls_guard.log and f"https://127.0.0.1:{tls_guard.port}" in tls_guard.log


def test_a_client_that_does_not_trust_the_ca_is_refused_the_connection(tls_guard: Guard) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(tls_guard.url + "/api/v2/heartbeat", timeout=5)


def test_plain_http_to_the_https_port_is_closed_at_once(tls_guard: Guard) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", tls_guard.port), timeout=5) as sock:
        sock.sendall(b"GET /api/v2/heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            answer = read_head(sock)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" and time.monotonic() - started < 3, "closed, not answered in clear text and not left hanging"
    result = cli("health", f"http://127.0.0.1:{tls_guard.port}")
    assert result.returncode == 1 and len(result.stdout.strip().splitlines()) == 1, result.stdout
    # The service goes on serving HTTPS.
    trusted = ssl.create_default_context(cafile=str(tls_guard.ca))
    assert httpx.get(tls_guard.url + "/api/v2/heartbeat", verify=trusted, timeout=5).status_code == 200


@pytest.mark.parametrize("version, ciphers", [(ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0"),
                                              (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")])
def test_old_protocols_and_ciphers_are_refused(tls_guard: Guard, version: ssl.TLSVersion, ciphers: str) -> None:
    """TLS 1.1, and TLS 1.2 with a CBC (not AEAD) suite."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = version
    context.set_ciphers(ciphers)
    with socket.create_connection(("127.0.0.1", tls_guard.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            context.wrap_socket(raw, server_hostname="127.0.0.1").do_handshake()


def test_a_rotated_certificate_is_served_and_open_connections_keep_going(tls_guard: Guard, ca: Authority) -> None:
    live: Path = tls_guard.live  # type: ignore[attr-defined]
    verify = ssl.create_default_context(cafile=str(ca.cert))
    failures: list[str] = []
    done = threading.Event()
    answered = [0]

    def load() -> None:
        with httpx.Client(base_url=tls_guard.url, verify=verify, timeout=10) as http:
            while not done.is_set():
                try:
                    r = http.get("/api/v2/heartbeat")
                    if r.status_code != 200:
                        failures.append(f"{r.status_code}")
                    answered[0] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                with httpx.Client(verify=verify, timeout=10) as fresh:  # and a new connection each round
                    try:
                        fresh.get(tls_guard.url + "/api/v2/heartbeat")
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))

    # A keep-alive connection opened on the old certificate, used again after the rotation.
    raw = socket.create_connection(("127.0.0.1", tls_guard.port), timeout=10)
    kept = verify.wrap_socket(raw, server_hostname="127.0.0.1")
    request = f"GET /api/v2/heartbeat HTTP/1.1\r\nHost: 127.0.0.1:{tls_guard.port}\r\n\r\n".encode()
    kept.sendall(request)
    assert read_head(kept).startswith(b"HTTP/1.1 200")
    old = x509_serial(kept)
    workers = [threading.Thread(target=load) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(0.3)
        second = ca.issue("chromaguard", "second")
        _place(second, live)
        assert tls_guard.proc is not None
        tls_guard.proc.send_signal(signal.SIGHUP)
        _wait_serial(tls_guard, ca, second.serial)
        time.sleep(0.3)
    finally:
        done.set()
        for w in workers:
            w.join(30)
    kept.sendall(request)
    assert read_head(kept).startswith(b"HTTP/1.1 200"), "the connection opened before the rotation goes on"
    assert x509_serial(kept) == old != second.serial
    kept.close()
    assert not failures and answered[0] > 5, (failures[:5], answered)
    assert "TLS certificate reloaded" in tls_guard.log

    # Without a signal: the files are checked every 5 s.
    third = ca.issue("chromaguard", "third")
    _place(third, live)
    _wait_serial(tls_guard, ca, third.serial, timeout=12)


def x509_serial(sock: ssl.SSLSocket) -> int:
    from cryptography import x509

    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_half_a_rotation_keeps_the_previous_certificate_until_the_pair_matches(tls_guard: Guard,
                                                                              ca: Authority) -> None:
    live: Path = tls_guard.live  # type: ignore[attr-defined]
    before = served_serial("127.0.0.1", tls_guard.port, ca.cert)
    new = ca.issue("chromaguard", "half")
    (live / "tls.crt").write_bytes(new.cert.read_bytes())  # the certificate first; its key comes later
    assert tls_guard.proc is not None
    tls_guard.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "cannot be used yet" not in tls_guard.log:
        assert time.monotonic() < deadline, tls_guard.log[-2000:]
        time.sleep(0.1)
    assert served_serial("127.0.0.1", tls_guard.port, ca.cert) == before, "the previous pair still serves"
    (live / "tls.key").write_bytes(new.key.read_bytes())
    tls_guard.proc.send_signal(signal.SIGHUP)
    _wait_serial(tls_guard, ca, new.serial)


def test_our_tools_speak_https(tls_guard: Guard, ca: Authority, tmp_path: Path) -> None:
    url = tls_guard.url
    ok = cli("health", url, "--cacert", str(ca.cert))
    assert ok.returncode == 0 and ok.stdout.startswith("healthy"), ok.stdout + ok.stderr
    untrusted = cli("health", url)
    assert untrusted.returncode == 1 and "not trusted" in untrusted.stdout and "--cacert" in untrusted.stdout
    assert len(untrusted.stdout.strip().splitlines()) == 1
    insecure = cli("health", url, "--insecure")
    assert insecure.returncode == 0, insecure.stdout
    # In the service's own container: the default target, pinned to the server's own certificate.
    live: Path = tls_guard.live  # type: ignore[attr-defined]
    local = cli("health", "--ready", CHROMA_SERVER_HTTP_PORT=str(tls_guard.port),
                CHROMAGUARD_SSL_CERTFILE=str(live / "tls.crt"))
    assert local.returncode == 0, local.stdout + local.stderr
    status = cli("status", url, "--json", "--cacert", str(ca.cert))
    assert status.returncode == 0 and '"engine"' in status.stdout, status.stdout + status.stderr
    backup = cli("backup", "--url", url, "--output", str(tmp_path / "bk"), CHROMAGUARD_CACERT=str(ca.cert))
    assert backup.returncode == 0, backup.stderr
    assert list((tmp_path / "bk").glob("*.tar.gz"))
    refused = cli("backup", "--url", url, "--output", str(tmp_path / "bk2"))
    assert refused.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


def test_client_certificates_required(ca: Authority, tmp_path: Path) -> None:
    server = ca.issue("chromaguard", "mtls-server")
    clients = Authority(tmp_path / "clients", "client CA")
    alice = clients.issue("alice", "alice", client=True)
    stranger = Authority(tmp_path / "other", "someone else's CA").issue("mallory", "mallory", client=True)
    env = {"CHROMAGUARD_SSL_CERTFILE": str(server.cert), "CHROMAGUARD_SSL_KEYFILE": str(server.key),
           "CHROMAGUARD_SSL_CA_CERTS": str(clients.cert), "CHROMAGUARD_SSL_CLIENT_CERT": "required"}
    g = Guard(env=env, ca=ca.cert)
    try:
        g.start(wait=False)

        def verify(who: Issued | None) -> ssl.SSLContext:
            context = ssl.create_default_context(cafile=str(ca.cert))
            if who is not None:
                context.load_cert_chain(who.cert, who.key)
            return context

        wait_http(g.url + "/healthz", proc=g.proc, log=g.log_path, verify=verify(alice))
        assert httpx.get(g.url + "/api/v2/heartbeat", verify=verify(alice), timeout=5).status_code == 200
        for who in (None, stranger):
            with pytest.raises(httpx.HTTPError):
                httpx.get(g.url + "/api/v2/heartbeat", verify=verify(who), timeout=5)
    finally:
        g.close()


@pytest.mark.parametrize("files, expected", [
    ({"CHROMAGUARD_SSL_CERTFILE": "/nonexistent/tls.crt"}, "no such file"),
    ({"CHROMAGUARD_SSL_CERTFILE": "{cert}", "CHROMAGUARD_SSL_KEYFILE": "{other_key}"}, "not a PEM certificate and its"),
    ({"CHROMAGUARD_SSL_KEYFILE": "{key}"}, "a key needs its certificate"),
    ({"CHROMAGUARD_SSL_CERTFILE": "{cert}", "CHROMAGUARD_SSL_KEYFILE": "{key}",
      "CHROMAGUARD_SSL_CLIENT_CERT": "required"}, "needs the CA bundle"),
])
def test_bad_tls_settings_stop_the_start_with_one_line(ca: Authority, files: dict[str, str], expected: str) -> None:
    one, other = ca.issue("chromaguard", "bad-one"), ca.issue("chromaguard", "bad-other")
    env = {k: v.format(cert=one.cert, key=one.key, other_key=other.key) for k, v in files.items()}
    result = cli("serve", "--port", str(free_port()), "--ephemeral", timeout=60, **env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_connections_in_their_handshake_count_against_the_per_client_limit(ca: Authority) -> None:
    """A client that opens connections and never finishes a handshake is held to the same
    per-client limit as any other (it is counted from the accept, not from the handshake)."""
    server = ca.issue("chromaguard", "limits")
    env = {"CHROMAGUARD_SSL_CERTFILE": str(server.cert), "CHROMAGUARD_SSL_KEYFILE": str(server.key),
           "CHROMAGUARD_MAX_CONNECTIONS_PER_CLIENT": "3"}
    with Guard(env=env, ca=ca.cert) as g:
        silent = [socket.create_connection(("127.0.0.1", g.port), timeout=5) for _ in range(3)]
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        extra.settimeout(3)
        started = time.monotonic()
        try:
            got = extra.recv(100)
        except ConnectionResetError:
            got = b""
        assert got == b"" and time.monotonic() - started < 2, "over the limit: closed at once, nothing in clear"
        extra.close()
        for sock in silent:
            sock.close()
        time.sleep(0.3)
        trusted = ssl.create_default_context(cafile=str(ca.cert))
        assert httpx.get(g.url + "/api/v2/heartbeat", verify=trusted, timeout=5).status_code == 200
        assert "refused a connection from 127.0.0.1" in g.log


def test_the_local_probe_trusts_the_servers_own_certificate_not_its_chain(ca: Authority, tmp_path: Path) -> None:
    """With a chain file (certificate, then its CA, as certbot's fullchain.pem), the probe pins
    the first certificate only: another certificate the same CA signed, on the same port, is
    an impostor, and is never sent the probe's token."""
    real, impostor = ca.issue("chromaguard", "real"), ca.issue("impostor", "impostor")
    chain = tmp_path / "fullchain.pem"
    chain.write_bytes(real.cert.read_bytes() + ca.cert.read_bytes())
    port = free_port()
    seen: list[bytes] = []

    def serve(issued: Issued, ready: threading.Event, stop: threading.Event) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(issued.cert, issued.key)
        with socket.create_server(("127.0.0.1", port)) as listener:
            listener.settimeout(0.2)
            ready.set()
            while not stop.is_set():
                try:
                    raw, _ = listener.accept()
                except TimeoutError:
                    continue
                try:
                    with context.wrap_socket(raw, server_side=True) as sock:
                        seen.append(read_head(sock))
                        body = b'{"nanosecond heartbeat": 1}'
                        sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                     b"connection: close\r\n\r\n%b" % (len(body), body))
                except (ssl.SSLError, OSError):
                    pass

    for issued, healthy in ((impostor, False), (real, True)):
        ready, stop = threading.Event(), threading.Event()
        thread = threading.Thread(target=serve, args=(issued, ready, stop), daemon=True)
        thread.start()
        ready.wait(5)
        seen.clear()
        try:
            result = cli("health", CHROMA_SERVER_HTTP_PORT=str(port), CHROMAGUARD_SSL_CERTFILE=str(chain),
                         CHROMAGUARD_PROBE_TOKEN="probe-secret")
        finally:
            stop.set()
            thread.join(5)
        assert (result.returncode == 0) == healthy, (issued, result.stdout, result.stderr)
        if not healthy:
            assert "not trusted" in result.stdout and not any(b"probe-secret" in head for head in seen)


def test_a_resumed_session_from_before_the_client_ca_changed_is_turned_away(ca: Authority) -> None:
    from chromaguard.http11.tls import ServerTls, TlsFiles

    server = ca.issue("chromaguard", "resume")
    tls = ServerTls(TlsFiles(server.cert, server.key, ca.cert, "required"))

    class Session:
        def __init__(self, made: float) -> None:
            self.time = int(made)

    class SslObject:
        def __init__(self, reused: bool, made: float) -> None:
            self.session_reused, self.session = reused, Session(made)

    class Transport:
        def __init__(self, ssl_object: SslObject) -> None:
            self.ssl_object = ssl_object

        def get_extra_info(self, name: str) -> object:
            return self.ssl_object if name == "ssl_object" else None

    old = Transport(SslObject(True, time.time() - 100))
    assert not tls.refuses(old), "nothing changed since: resuming is fine"  # type: ignore[arg-type]
    assert tls.listener.num_tickets == 0, "no TLS 1.3 tickets to resume with when client certificates are checked"
    tls.clients_checked_since = time.time() - 10
    assert tls.refuses(old)  # type: ignore[arg-type]
    assert not tls.refuses(Transport(SslObject(True, time.time())))  # type: ignore[arg-type]
    assert not tls.refuses(Transport(SslObject(False, time.time() - 100)))  # type: ignore[arg-type]


def test_a_verified_client_certificate_can_stand_for_a_principal(ca: Authority, tmp_path: Path) -> None:
    """mTLS instead of a token: a record's ``certificate`` names the CN (or a SAN) of a client
    certificate the CA bundle vouches for; a token sent decides over the certificate."""
    server = ca.issue("chromaguard", "mtls-auth")
    clients = Authority(tmp_path / "clients", "client CA")
    alice, bob = clients.issue("alice", "alice", client=True), clients.issue("bob", "bob", client=True)
    eve = clients.issue("eve", "eve", client=True, hosts=("ops.internal",))  # CN eve, SAN DNS:ops.internal
    dns_alice = clients.issue("mallory", "mallory", client=True, hosts=("alice",))  # SAN DNS:alice, not CN
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps([{"certificate": "CN:alice", "name": "alice", "role": "read"},
                                  {"certificate": "CN:eve", "name": "eve", "role": "read"},
                                  {"certificate": "DNS:ops.internal", "name": "ops-box", "role": "admin"},
                                  {"token": "admin-tok", "name": "ops", "role": "admin"}]))
    env = {"CHROMAGUARD_SSL_CERTFILE": str(server.cert), "CHROMAGUARD_SSL_KEYFILE": str(server.key),
           "CHROMAGUARD_SSL_CA_CERTS": str(clients.cert), "CHROMAGUARD_SSL_CLIENT_CERT": "optional",
           "CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens)}

    def as_(who: Issued | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca.cert))
        if who is not None:
            context.load_cert_chain(who.cert, who.key)
        return context

    base = "/api/v2/tenants/default_tenant/databases/default_database/collections"
    with Guard(env=env, ca=ca.cert) as g:
        assert httpx.get(g.url + base, verify=as_(alice)).status_code == 200, "alice's certificate: a reader"
        refused = httpx.post(g.url + base, json={"name": "by-alice"}, verify=as_(alice))
        assert refused.status_code == 403 and "alice may not" in refused.text
        assert httpx.get(g.url + base, verify=as_(bob)).status_code == 401, "a certificate no record names"
        assert httpx.get(g.url + base, verify=as_(dns_alice)).status_code == 401, "a DNS name is not a CN"
        ambiguous = httpx.get(g.url + base, verify=as_(eve))
        assert ambiguous.status_code == 403 and "more than one record" in ambiguous.text, "two records: no guess"
        assert httpx.get(g.url + base, verify=as_(None)).status_code == 401
        made = httpx.post(g.url + base, json={"name": "by-ops"}, verify=as_(alice),
                          headers={"authorization": "Bearer admin-tok"})
        assert made.status_code == 200, "the token decides over the certificate"
        wrong = httpx.get(g.url + base, verify=as_(alice), headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 403, "a bad token is not rescued by a good certificate"
    config = cli("config", "--json", **env)
    people = {p["name"]: p for p in json.loads(config.stdout)["credentials"]}
    assert people["alice"]["role"] == "read"


JS_CLIENT = Path(__file__).resolve().parents[2] / ".ci" / "cache" / "js" / "node_modules" / "chromadb"


def test_the_js_client_works_over_https(ca: Authority, tmp_path: Path) -> None:
    """The official JS client (npm ``chromadb``) over HTTPS, trusting the CA through Node's own
    NODE_EXTRA_CA_CERTS; and the same client refused when it does not trust it."""
    node = shutil.which("node")
    if node is None or not JS_CLIENT.is_dir():
        if os.environ.get("CI"):
            raise AssertionError(f"{JS_CLIENT} or node is missing: .ci/run installs the JS client with npm")
        pytest.skip("the JS client is not installed here (.ci/run installs it with npm)")
    server = ca.issue("chromaguard", "js")
    tokens = tmp_path / "tokens.json"
    tokens.write_text('["js-token"]')
    env = {"CHROMAGUARD_SSL_CERTFILE": str(server.cert), "CHROMAGUARD_SSL_KEYFILE": str(server.key),
           "CHROMA_SERVER_AUTH_PROVIDER": "token", "CHROMA_SERVER_AUTH_CREDENTIALS_FILE": str(tokens)}
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(Path(__file__).parent / "js" / "tls_client.mjs", app / "tls_client.mjs")
    (app / "node_modules").symlink_to(JS_CLIENT.parent)
    with Guard(env=env, ca=ca.cert) as g:
        def run(trusted: bool) -> dict:
            node_env = {**os.environ, "GUARD_PORT": str(g.port), "GUARD_TOKEN": "js-token"}
            node_env.pop("NODE_EXTRA_CA_CERTS", None)
            if trusted:
                node_env["NODE_EXTRA_CA_CERTS"] = str(ca.cert)
            done = subprocess.run([node, str(app / "tls_client.mjs")], capture_output=True, text=True, timeout=60,
                                  env=node_env, cwd=app)
            return json.loads(done.stdout.strip().splitlines()[-1])

        got = run(trusted=True)
        assert got == {"heartbeat": True, "query": ["js-1"], "count": 2}, got
        refused = run(trusted=False)
        assert "error" in refused and "count" not in refused, refused


def test_a_large_first_request_on_a_new_connection_and_resets_mid_handshake(tls_guard: Guard, ca: Authority) -> None:
    """A client may send its whole first request with the end of its handshake: megabytes of
    records on a fresh connection go through. Clients that reset mid-handshake leave nothing
    behind that keeps the next ones from being served."""
    trusted = ssl.create_default_context(cafile=str(ca.cert))
    made = httpx.post(tls_guard.url + "/api/v2/tenants/default_tenant/databases/default_database/collections",
                      json={"name": "big-first", "get_or_create": True}, verify=trusted)
    cid = made.json()["id"]
    rng_rows = [[float(i % 7), float(i % 11)] for i in range(4_000)]  # about 300 KB a request
    for round_ in range(5):
        with httpx.Client(verify=trusted, timeout=60) as fresh:  # a new connection each time
            answer = fresh.post(f"{tls_guard.url}/api/v2/tenants/default_tenant/databases/default_database/"
                                f"collections/{cid}/upsert",
                                json={"ids": [f"r{round_}-{i}" for i in range(len(rng_rows))],
                                      "embeddings": rng_rows, "documents": ["x" * 40] * len(rng_rows)})
        assert answer.status_code == 200, (round_, answer.status_code, answer.text[:200])
    for _ in range(200):  # connect, start a handshake, reset
        raw = socket.create_connection(("127.0.0.1", tls_guard.port), timeout=5)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        raw.sendall(b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + b"\x00" * 40)
        raw.close()
    assert httpx.get(tls_guard.url + "/api/v2/heartbeat", verify=trusted, timeout=10).status_code == 200
    time.sleep(0.5)
    assert "Exception in callback" not in tls_guard.log and "Task was destroyed" not in tls_guard.log
