"""Real parts, really started: tiny PRMs of every format, a throwaway redis-server on a free port, and the service
in a subprocess (`python -m server`, i.e. `repirl serve`) under uvicorn, reached over HTTP with httpx."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from repirl.scoring.tiny_prms import build_tiny_prm

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key-123"
HASHED_ONLY_KEY = "second-key-456"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A free loopback port BELOW the ephemeral range. A port from bind(0) is an ephemeral one, and a server given it
    binds it only once its engines are up (a minute for vLLM); meanwhile vLLM's own sockets and every outgoing
    connection on the machine take ephemeral ports, and one took it: two vLLM services of one CI run (stop 40) exited
    with "address already in use". Below the range only another test's pick can collide (a random one of ~20,000)."""
    rng, low = random.Random(), _ephemeral_low()
    if low <= 11_000:  # a machine whose ephemeral range starts low: take one of those, as before
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    for _ in range(1000):
        port = rng.randrange(10_000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in 10000-{low}")


class RedisProc:
    def __init__(self, workdir: Path):
        if not shutil.which("redis-server"):
            pytest.skip("redis-server binary not found")
        self.port, self.workdir = free_port(), workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class ServerProc:
    def __init__(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(self.port), *args], cwd=REPO,
                                     env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/livez", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise TimeoutError("server did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def poll(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Whether `predicate()` became true within `timeout` seconds (tests wait on events, not on sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def metric(client: httpx.Client, name: str, **labels) -> float:
    """Sum of a Prometheus sample over series whose labels include `labels`."""
    total = 0.0
    r = client.get("/metrics")
    assert r.status_code == 200, f"/metrics answered {r.status_code} (behind the API key when keys are set)"
    for line in r.text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="session")
def server_prms(tmp_path_factory):
    root = tmp_path_factory.mktemp("server_prms")
    return {fmt: build_tiny_prm(root / fmt, fmt) for fmt in ("token-reward", "qwen-step-tag", "math-shepherd",
                                                             "implicit")}


@pytest.fixture(scope="session")
def redis_main(tmp_path_factory):
    r = RedisProc(tmp_path_factory.mktemp("redis_main")).start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def main_server(server_prms, redis_main, tmp_path_factory):
    """Four PRMs (one per format), Redis, API keys, limits from a YAML config file."""
    d = tmp_path_factory.mktemp("main_server")
    import hashlib

    (d / "keys.txt").write_text(f"# test keys\n{API_KEY}\nsha256:{hashlib.sha256(HASHED_ONLY_KEY.encode()).hexdigest()}\n")
    (d / "config.yaml").write_text(
        # a generous Redis timeout: on a loaded CI machine 50 ms fails open now and then (server_b tests fail-open)
        "engine: hf\ncache_salt: null\nredis_timeout_ms: 1000\nlimits:\n  max_items: 8\n  max_candidates: 8\n  max_steps: 10\n"
        "  max_chars: 300\n  max_tokens: 400\n  max_body_bytes: 20000\n")
    args = ["--config", str(d / "config.yaml"), "--redis-url", redis_main.url, "--api-key-file", str(d / "keys.txt"),
            "--prm", f"tr={server_prms['token-reward']}", "--prm", f"qwen={server_prms['qwen-step-tag']}",
            "--prm", f"shepherd={server_prms['math-shepherd']}", "--prm", f"implicit={server_prms['implicit']}"]
    srv = ServerProc(args, log=d / "server.log").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def default_limits_server(server_prms, tmp_path_factory):
    """The token-reward PRM with every limit at its default (1 MB bodies): what hostile-input tests need to reach the
    parsers and caches behind the limits. No keys, no Redis (the in-process score cache)."""
    d = tmp_path_factory.mktemp("default_limits_server")
    srv = ServerProc(["--engine", "hf", "--prm", f"tr={server_prms['token-reward']}"], log=d / "server.log")
    yield srv.wait_ready()
    srv.stop()


@pytest.fixture(scope="session")
def vllm_server(server_prms, tmp_path_factory):
    """The service on vLLM engines, shared by the session (each engine start costs 30-60 s here): the token-reward
    PRM on the pooling runner and the toy policy in-process (`--policy vllm:DIR`), both with a 256-token context."""
    pytest.importorskip("vllm")
    from repirl.policy.toy import build_toy_policy

    d = tmp_path_factory.mktemp("vllm_server")
    env = {"REPIRL_VLLM_MAX_MODEL_LEN": "256"}
    srv = ServerProc(["--engine", "vllm", "--prm", f"tr={server_prms['token-reward']}",
                      "--policy", f"vllm:{build_toy_policy()}"], env=env, log=d / "server.log").wait_ready(timeout=300)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(main_server):
    with httpx.Client(base_url=main_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


class SlowRequest:
    """A POST whose last body byte is held back: the server has the request in flight (its app was called on the
    headers) and cannot finish it until `finish()`. Makes "a request in flight at SIGTERM" an event, not a race."""

    def __init__(self, url: str, path: str, body: dict, headers: dict | None = None):
        import json
        from urllib.parse import urlsplit

        import h11

        u = urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=300)
        self.conn = h11.Connection(h11.CLIENT)
        data = json.dumps(body).encode()
        hdrs = [("host", f"{u.hostname}:{u.port}"), ("content-type", "application/json"),
                ("content-length", str(len(data))), ("connection", "close"), *(headers or {}).items()]
        self.sock.sendall(self.conn.send(h11.Request(method="POST", target=path, headers=hdrs))
                          + self.conn.send(h11.Data(data=data[:-1])))
        self._last = data[-1:]

    def send_rest(self) -> "SlowRequest":
        """Sends the held-back byte: the request is complete and the server goes on with it."""
        import h11

        if self._last is not None:
            self.sock.sendall(self.conn.send(h11.Data(data=self._last)) + self.conn.send(h11.EndOfMessage()))
            self._last = None
        return self

    def hang_up(self) -> None:
        """Closes the connection without reading the answer: a client that gave up."""
        self.sock.close()

    def finish(self) -> tuple[int, bytes]:
        """Sends the last byte; (status, body) once the response has ended (a stream: all of its events)."""
        import h11

        self.send_rest()
        status, body = None, b""
        try:
            while True:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(self.sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, body
        finally:
            self.sock.close()
