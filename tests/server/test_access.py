"""Issue 22.10 over real HTTP: API keys reload without a restart (the key file changed, or SIGHUP), and with no keys
set a service bound to loopback answers only loopback Host names (DNS rebinding from a browser). /metrics behind the
key is checked in tests/server/test_api.py (test_auth)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerProc, poll

pytestmark = pytest.mark.slow

OLD, NEW = "old-key-0123456789", "new-key-9876543210"


def _status(srv: ServerProc, key: str) -> int:
    return httpx.get(srv.url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code


def _serve(server_prms, d: Path, config: str) -> ServerProc:
    (d / "keys.txt").write_text(f"{OLD}\n{NEW}\n")
    (d / "config.yaml").write_text("engine: hf\n" + config)
    return ServerProc(["--config", str(d / "config.yaml"), "--api-key-file", str(d / "keys.txt"),
                       "--prm", f"tr={server_prms['token-reward']}"], log=d / "server.log").wait_ready()


def _replace(path: Path, text: str) -> None:
    """As an operator (or a Kubernetes Secret volume) does: a new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    tmp.replace(path)


def test_revoked_key_stops_working_when_the_file_changes(server_prms, tmp_path):
    srv = _serve(server_prms, tmp_path, "api_key_reload_s: 0.2\n")
    try:
        assert _status(srv, OLD) == 200 and _status(srv, NEW) == 200
        _replace(tmp_path / "keys.txt", f"{NEW}\n")  # revoke OLD
        assert poll(lambda: _status(srv, OLD) == 401, timeout=15), "a revoked key still works"
        assert _status(srv, NEW) == 200
        _replace(tmp_path / "keys.txt", "")  # a broken file: the keys in use stay
        assert poll(lambda: "not reloaded" in (tmp_path / "server.log").read_text(), timeout=15)
        assert _status(srv, NEW) == 200 and _status(srv, OLD) == 401
    finally:
        srv.stop()


def test_sighup_reloads_the_keys(server_prms, tmp_path):
    srv = _serve(server_prms, tmp_path, "api_key_reload_s: 0\n")  # no polling: only the signal reloads
    try:
        _replace(tmp_path / "keys.txt", f"sha256:{__import__('hashlib').sha256(NEW.encode()).hexdigest()}\n")
        assert _status(srv, OLD) == 200  # not reloaded yet
        srv.proc.send_signal(signal.SIGHUP)  # was the default action: the process died
        assert poll(lambda: srv.proc.poll() is None and _status(srv, OLD) == 401, timeout=15)
        assert _status(srv, NEW) == 200 and srv.proc.poll() is None
    finally:
        srv.stop()


def test_host_allowlist_without_keys(server_prms, tmp_path):
    """A keyless service on 127.0.0.1: a page at http://rebound.example:PORT whose name resolves to 127.0.0.1 makes
    the browser send `Host: rebound.example:PORT`; that is refused. The loopback names are served."""
    srv = ServerProc(["--engine", "hf", "--prm", f"tr={server_prms['token-reward']}"],
                     log=tmp_path / "server.log").wait_ready()
    port = srv.port
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            body = {"question": "2+2?", "steps": ["2+2=4"]}
            assert c.post("/v1/score", json=body, headers={"Host": f"rebound.example:{port}"}).status_code == 400
            assert c.get("/v1/models", headers={"Host": "rebound.example"}).status_code == 400
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
                assert c.get("/v1/models", headers={"Host": host}).status_code == 200, host
            assert c.post("/v1/score", json=body).status_code == 200
    finally:
        srv.stop()


def test_trusted_hosts_defaults():
    from server.settings import Settings

    assert Settings().trusted_hosts() == ["127.0.0.1", "[::1]", "localhost"]
    assert Settings(host="0.0.0.0").trusted_hosts() == ["*"]  # not loopback: reachable by name, hosts unknown
    assert Settings(api_key_file="keys.txt").trusted_hosts() == ["*"]  # keys: a browser page cannot send one
    assert Settings(host="0.0.0.0", allowed_hosts=["prm.example.com"]).trusted_hosts() == ["prm.example.com"]
    assert "/metrics" not in Settings().public_paths
