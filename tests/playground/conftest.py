"""The playground in headless Chromium (the Debian package, driven by Playwright's Python package: no browser
download) against the real service, started once for the session as a subprocess (`python -m server`): the toy
policy on transformers, a token-reward PRM initialised from it and a tiny qwen-step-tag PRM, API keys from a file.

`REPIRL_PLAYGROUND_SCREENSHOTS=docs/playground` saves a screenshot of each view there (how the README's were made).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerProc, metric

CHROMIUM = Path(os.environ.get("REPIRL_CHROMIUM", "/usr/bin/chromium"))
API_KEY = "playground-key-7f3a"
TIMEOUT_MS = 20_000


@pytest.fixture(scope="session")
def playground_models(tmp_path_factory):
    """(policy, token-reward PRM, qwen-step-tag PRM). The policy is the toy policy with a longer position range:
    it memorised short solutions only, but at temperature 2 it writes noise that ran past the 256 positions it was
    built with (the search then failed instead of running long enough to be stopped). Qwen2's rotary positions
    have no weights, so the copy samples the same tokens; the PRM initialised from it inherits the range."""
    import torch

    from repirl.artifacts import init_token_reward_prm
    from repirl.policy.toy import build_toy_policy
    from repirl.scoring.tiny_prms import build_tiny_prm

    root = tmp_path_factory.mktemp("playground_models")
    policy = root / "policy"
    shutil.copytree(build_toy_policy(), policy)
    config = json.loads((policy / "config.json").read_text())
    config["max_position_embeddings"] = 2048
    (policy / "config.json").write_text(json.dumps(config, indent=2))
    with torch.random.fork_rng():  # the PRM's fresh head: the same on every run (so are the trees drawn)
        torch.manual_seed(0)
        toy_prm = init_token_reward_prm(policy, root / "toy-prm")
    return policy, toy_prm, build_tiny_prm(root / "qwen-prm", "qwen-step-tag")


@pytest.fixture(scope="session")
def server(playground_models, tmp_path_factory):
    policy, toy_prm, qwen_prm = playground_models
    d = tmp_path_factory.mktemp("playground_server")
    (d / "keys.txt").write_text(API_KEY + "\n")
    (d / "config.yaml").write_text("engine: hf\ntorch_threads: 1\nlimits:\n  max_steps: 40\n")
    srv = ServerProc(["--config", str(d / "config.yaml"), "--api-key-file", str(d / "keys.txt"),
                      "--prm", f"toy={toy_prm}", "--prm", f"qwen={qwen_prm}", "--policy", f"hf:{policy}"],
                     log=d / "server.log").wait_ready(timeout=180)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def api(server):
    """An httpx client with the key: what the page shows is checked against what the API answers."""
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


# package scope, not session: Playwright's sync API keeps an asyncio loop running in the main thread while it is
# open, and every later async test (pytest-asyncio) then failed with "cannot be called from a running event loop"
@pytest.fixture(scope="package")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` (make test installs it when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield b
        b.close()


class PageLog:
    """Everything a page did that a test may want to check: requests (URL, Authorization header), JS errors."""

    def __init__(self, page):
        self.requests: list[tuple[str, str | None]] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append((r.url, r.headers.get("authorization"))))
        page.on("pageerror", lambda e: self.errors.append(str(e)))


@pytest.fixture
def page(browser, server):
    """A fresh page on /playground (a new browser context: nothing carried over between tests)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.log = PageLog(pg)
    pg.goto(server.url + "/playground")
    yield pg
    errors = pg.log.errors
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def connect(page, key: str = API_KEY) -> None:
    from playwright.sync_api import expect

    page.fill("#api-key", key)
    page.click("#connect")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")


def screenshot(page, name: str) -> None:
    out = os.environ.get("REPIRL_PLAYGROUND_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"{name}.png"), full_page=True)


def read_metric(server, name: str, **labels) -> float:
    with httpx.Client(base_url=server.url, timeout=5, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        return metric(c, name, **labels)


def wait_for_metric(server, name: str, want: float, timeout_s: float = 20.0, **labels) -> float:
    """Poll /metrics until the sample equals `want` (a server-side condition: nothing in the DOM to wait on)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=server.url, timeout=5, headers={"Authorization": f"Bearer {API_KEY}"}) as c:
        while True:
            got = metric(c, name, **labels)
            if got == want or time.monotonic() > deadline:
                return got
            time.sleep(0.05)


def parse_sse(text: str) -> list[tuple[str, dict]]:
    """(event, data) per server-sent event of a whole response body."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        kind, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            events.append((kind, json.loads("\n".join(data))))
    return events
