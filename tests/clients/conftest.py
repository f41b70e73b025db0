"""One real service for every SDK test: `python -m server` in a subprocess (tests/server/conftest.py's ServerProc)
on the transformers engine, the toy policy (`--policy hf:DIR`, no vLLM engine) and a token-reward PRM initialised
from it, an API key, and small limits so the adapters have to learn and respect them (max_items 16)."""

from __future__ import annotations

import hashlib

import pytest

from tests.server.conftest import ServerProc

API_KEY = "sdk-test-key"
MAX_ITEMS = 16
OPENRLHF_PATH = "/v1/openrlhf/reward"


@pytest.fixture(scope="session")
def toy_policy():
    from repirl.policy.toy import build_toy_policy

    return build_toy_policy()


def pytest_collection_modifyitems(session, config, items):
    """Tests of this folder that need no service run first, while it starts (it takes 15-25 s on 2 cores)."""
    here = [i for i, item in enumerate(items) if "tests/clients/" in str(item.fspath).replace("\\", "/")]
    if not here:
        return
    mine = [items[i] for i in here]
    mine.sort(key=lambda item: "sdk_service" in getattr(item, "fixturenames", ()))  # stable: file order kept
    for i, item in zip(here, mine):
        items[i] = item


@pytest.fixture(scope="session")
def _sdk_service_started(toy_policy, tmp_path_factory):
    from repirl.artifacts import init_token_reward_prm

    d = tmp_path_factory.mktemp("sdk_service")
    prm = init_token_reward_prm(toy_policy, d / "prm")
    (d / "keys.txt").write_text(f"sha256:{hashlib.sha256(API_KEY.encode()).hexdigest()}\n")
    # OpenRLHF's HTTP client sends no key: its route is public here, as docs tell operators to configure it
    public = ["/livez", "/readyz", "/metrics", OPENRLHF_PATH]
    (d / "config.yaml").write_text(
        "engine: hf\ntorch_threads: 1\n"
        f"public_paths: {public}\n"
        f"limits:\n  max_items: {MAX_ITEMS}\n  max_candidates: 16\n  max_steps: 8\n  max_chars: 400\n"
        "  max_search_samples: 256\n  max_body_bytes: 200000\n")
    srv = ServerProc(["--config", str(d / "config.yaml"), "--api-key-file", str(d / "keys.txt"),
                      "--prm", f"tr={prm}", "--policy", f"hf:{toy_policy}",
                      "--trust-request-chat-template"],  # the SDK's pooling tests send vLLM's chat form with one
                     log=d / "server.log")
    srv.log_path = d / "server.log"
    yield srv
    srv.stop()


@pytest.fixture(autouse=True, scope="session")
def _start_early(request):
    """Starts the service (without waiting for it) when the first test of this folder runs, if any test of the
    session needs it."""
    if any("sdk_service" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("_sdk_service_started")


@pytest.fixture(scope="session")
def sdk_service(_sdk_service_started):
    srv = _sdk_service_started
    try:
        srv.wait_ready(timeout=180)
    except Exception:
        print(srv.log_path.read_text()[-4000:])
        raise
    return srv


@pytest.fixture(scope="session")
def client(sdk_service):
    from repirl_client import Client

    with Client(base_url=sdk_service.url, api_key=API_KEY, timeout=60) as c:
        yield c
