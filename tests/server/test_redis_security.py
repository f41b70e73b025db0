"""Issue 22.8 over real HTTP with real redis-servers: cached scores never outlive the PRM config they were computed
under (prm.json is part of the scoring revision), and the service reaches a Redis that wants AUTH, and TLS
(`rediss://`, through a TLS proxy: this redis-server has no TLS), with the password from a file or the environment,
never from the URL or the config."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerProc, free_port

pytestmark = pytest.mark.slow

PASSWORD = "s3cret-" + uuid.uuid4().hex[:12]
STEPS = ["3+4=7", "7*2=14", "Answer: 14"]


class Redis:
    """A throwaway redis-server with extra arguments (AUTH, TLS); `ping` connects the way the service must."""

    def __init__(self, workdir: Path, *args: str, **client_kwargs):
        if not shutil.which("redis-server"):
            pytest.skip("redis-server binary not found")
        self.port = free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                      "no", "--dir", str(workdir), *args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        self.client = redis.Redis(port=self.port, **client_kwargs)
        for _ in range(100):
            try:
                if self.client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server {args} did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def _score(srv: ServerProc, question: str) -> dict:
    r = httpx.post(srv.url + "/v1/score", json={"question": question, "steps": STEPS}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _serve(prm: Path, redis_url: str, log: Path, env: dict | None = None) -> ServerProc:
    return ServerProc(["--engine", "hf", "--prm", f"p={prm}", "--redis-url", redis_url],
                      env={"REPIRL_REDIS_TIMEOUT_MS": "2000", **(env or {})}, log=log).wait_ready()


def test_prm_json_change_is_a_new_revision(server_prms, tmp_path):
    """beta of an implicit PRM doubled in prm.json: the restarted service (same Redis, 7-day TTL) must compute the new
    rewards (twice the old ones), not serve the old config's cached ones."""
    prm = tmp_path / "prm"
    shutil.copytree(server_prms["implicit"], prm)
    redis = Redis(tmp_path)
    url = f"redis://127.0.0.1:{redis.port}/0"
    q = f"Start with 3. Add 4, then multiply by 2. ({uuid.uuid4().hex[:6]})"
    try:
        srv = _serve(prm, url, tmp_path / "before.log")
        try:
            old = _score(srv, q)
            assert _score(srv, q)["usage"]["cached_steps"] == len(STEPS)  # the cache works
        finally:
            srv.stop()
        cfg = json.loads((prm / "prm.json").read_text())
        cfg["beta"] *= 2
        (prm / "prm.json").write_text(json.dumps(cfg))
        srv = _serve(prm, url, tmp_path / "after.log")
        try:
            new = _score(srv, q)
        finally:
            srv.stop()
    finally:
        redis.stop()
    assert new["revision"] != old["revision"]
    assert new["usage"]["cached_steps"] == 0, "the old prm.json's cached rewards were served"
    want = [2 * r for r in old["data"][0]["step_rewards"]]
    assert new["data"][0]["step_rewards"] == pytest.approx(want, rel=1e-3, abs=1e-5)


def test_redis_with_auth_password_from_a_file(server_prms, tmp_path):
    redis = Redis(tmp_path, "--requirepass", PASSWORD, password=PASSWORD)
    import redis as redis_py

    with pytest.raises(redis_py.AuthenticationError):  # AUTH really is required
        redis_py.Redis(port=redis.port).set("x", "1")
    (tmp_path / "redis-password").write_text(PASSWORD + "\n")
    q = f"auth question {uuid.uuid4().hex[:6]}"
    try:
        srv = _serve(server_prms["token-reward"], f"redis://127.0.0.1:{redis.port}/0", tmp_path / "server.log",
                     env={"REPIRL_REDIS_PASSWORD_FILE": str(tmp_path / "redis-password"), "REPIRL_LOG_LEVEL": "info"})
        try:
            first = _score(srv, q)
            second = _score(srv, q)
        finally:
            srv.stop()
        assert first["usage"]["cached_steps"] == 0 and second["usage"]["cached_steps"] == len(STEPS)
        assert redis.client.keys(f"repirl:v1:{first['revision']}:*"), "nothing was written to the AUTH'd Redis"
    finally:
        redis.stop()
    assert PASSWORD not in (tmp_path / "server.log").read_text()


def _tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (cryptography, as trustme does)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject: str, key, issuer: str, issuer_key, ca: bool):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                             x509.DNSName("localhost")]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("repirl test CA", ca_key, "repirl test CA", ca_key, ca=True)
    srv = cert("127.0.0.1", srv_key, "repirl test CA", ca_key, ca=False)
    paths = d / "ca.pem", d / "server.pem", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(srv_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


class TLSProxy:
    """TLS in front of a plain redis-server (Python's ssl module, in a thread): Debian's redis-server 7.0 here is
    built without TLS (`--tls-ca-file` is a "Bad directive"; no redis-tls module), so the TLS end is ours and Redis
    behind it is real. What is under test is the client side: rediss://, the CA from the URL, AUTH over TLS."""

    def __init__(self, cert: Path, key: Path, upstream_port: int):
        import socket
        import socketserver
        import ssl
        import threading

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)

        def pipe(src, dst):
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                try:
                    tls = ctx.wrap_socket(self.request, server_side=True)
                except (ssl.SSLError, OSError):  # a client that does not trust our CA hangs up in the handshake
                    return
                with tls, socket.create_connection(("127.0.0.1", upstream_port)) as up:
                    back = threading.Thread(target=pipe, args=(up, tls), daemon=True)
                    back.start()
                    pipe(tls, up)
                    back.join(10)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_redis_over_tls_with_auth(server_prms, tmp_path):
    """rediss:// with the CA given in the URL (redis-py's `ssl_ca_certs`, hostname checked), the password from
    REPIRL_REDIS_PASSWORD; a client that does not trust the CA gets nothing."""
    import redis as redis_py

    ca, cert, key = _tls_files(tmp_path)
    redis = Redis(tmp_path, "--requirepass", PASSWORD, password=PASSWORD)
    proxy = TLSProxy(cert, key, redis.port)
    q = f"tls question {uuid.uuid4().hex[:6]}"
    try:
        tls_client = redis_py.Redis.from_url(f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca}", password=PASSWORD)
        assert tls_client.ping()
        with pytest.raises(redis_py.ConnectionError):  # the system CAs do not know ours: the handshake fails
            redis_py.Redis.from_url(f"rediss://127.0.0.1:{proxy.port}/0", password=PASSWORD).ping()
        srv = _serve(server_prms["token-reward"], f"rediss://127.0.0.1:{proxy.port}/0?ssl_ca_certs={ca}",
                     tmp_path / "server.log", env={"REPIRL_REDIS_PASSWORD": PASSWORD})
        try:
            first = _score(srv, q)
            second = _score(srv, q)
        finally:
            srv.stop()
        assert first["usage"]["cached_steps"] == 0 and second["usage"]["cached_steps"] == len(STEPS)
        assert redis.client.keys(f"repirl:v1:{first['revision']}:*")
    finally:
        proxy.stop()
        redis.stop()


def test_redact_url():
    from repirl.scoring.cache import redact_url

    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact_url("rediss://user:pw@h/1?ssl_ca_certs=/ca.pem") == "rediss://user:***@h/1?ssl_ca_certs=/ca.pem"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
