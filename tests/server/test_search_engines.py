"""Each policy engine behind the service, over real HTTP: a real `python -m vllm.entrypoints.openai.api_server`
serving the toy policy is used (1) directly by the remote engine, checked against transformers, and (2) as the
service's `--policy URL`; (3) the service with `--policy vllm:DIR` runs vLLM in-process. Greedy searches must pick
what the transformers engine picks (the engines agree token for token, tests/repirl/test_policy_vllm.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("vllm")

from repirl.artifacts import init_token_reward_prm  # noqa: E402
from repirl.policy import load_policy  # noqa: E402
from repirl.policy.remote import RemotePolicy, RemoteTokenizer  # noqa: E402
from repirl.policy.toy import TOY_QUESTION, build_toy_policy  # noqa: E402
from repirl.scoring.loader import load_scorer  # noqa: E402
from repirl.search import SearchParams, run_search  # noqa: E402
from tests.repirl.test_policy_vllm import _check_against_transformers, _check_sampling  # noqa: E402
from tests.server.conftest import ServerProc, free_port  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
VLLM_ENV = {"HF_HUB_OFFLINE": "1"}
GREEDY = {"question": TOY_QUESTION, "strategy": "beam", "n": 2, "beam_width": 1, "temperature": 0.0, "max_steps": 5}


@pytest.fixture(scope="module")
def toy_dir():
    return build_toy_policy()


@pytest.fixture(scope="module")
def prm_dir(toy_dir, tmp_path_factory):
    return init_token_reward_prm(toy_dir, tmp_path_factory.mktemp("engines_prm") / "prm")


@pytest.fixture(scope="module")
def hf_policy(toy_dir):
    return load_policy(toy_dir, engine="transformers")


@pytest.fixture(scope="module")
def reference(hf_policy, prm_dir):
    params = SearchParams(**{k: v for k, v in GREEDY.items() if k != "question"})
    return run_search(hf_policy, load_scorer(prm_dir, engine="hf"), TOY_QUESTION, params)


@pytest.fixture(scope="module")
def api_server(toy_dir, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("vllm") / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(toy_dir),
                             "--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--port", str(port),
                             # an explicit KV cache, as repirl.vllm_setup sets: the default reserves 92% of memory
                             "--kv-cache-memory-bytes", str(1 << 29)],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ | VLLM_ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"vLLM api_server exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("vLLM api_server did not answer /v1/models within 300 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_remote_policy_matches_transformers(api_server, hf_policy, toy_dir):
    policy = load_policy(api_server + "/v1")  # the served model name is the folder: tokenizer + policy.json found
    assert policy.model == str(toy_dir) and policy.config.step_separator == "\n\n"
    _check_against_transformers(policy, hf_policy)
    _check_sampling(policy)


def test_remote_tokenizer_agrees_with_the_local_one(api_server, hf_policy, toy_dir):
    remote = RemoteTokenizer(httpx.Client(base_url=api_server, timeout=30), str(toy_dir))
    text = hf_policy.encoder.template.render(TOY_QUESTION)
    assert remote.encode(text) == hf_policy.tokenizer.encode(text, add_special_tokens=False)
    policy = RemotePolicy(api_server, model=str(toy_dir))
    policy.tokenizer = remote  # as with no local folder: the server tokenizes each piece
    policy.encoder = type(policy.encoder)(remote, policy.config.prompt_template, policy.config.step_separator)
    _check_against_transformers(policy, hf_policy)


def _service_search(policy_spec: str, prm_dir, tmp_path, extra_env=None) -> list[dict]:
    (tmp_path / "config.yaml").write_text("engine: hf\nvllm_max_model_len: 256\n")
    srv = ServerProc(["--config", str(tmp_path / "config.yaml"), "--prm", f"tr={prm_dir}", "--policy", policy_spec],
                     env=VLLM_ENV | (extra_env or {}), log=tmp_path / "server.log")
    try:
        srv.wait_ready(timeout=300)
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            out = [c.post("/v1/search", json=GREEDY | {"strategy": s}) for s in ("beam", "dvts", "best-of-n")]
        assert all(r.status_code == 200 for r in out), [r.text for r in out]
        return [r.json() for r in out]
    finally:
        srv.stop()


def test_service_with_a_remote_policy(api_server, prm_dir, reference, tmp_path):
    beam, dvts, bon = _service_search(api_server + "/v1", prm_dir, tmp_path)
    assert beam["steps"] == reference.best.steps and beam["score"] == pytest.approx(reference.best.score, abs=1e-4)
    assert dvts["answer"] == bon["answer"] == reference.answer


def test_service_with_vllm_in_process(vllm_server, hf_policy, server_prms):
    """(3) The session's `vllm_server` (shared with the other vLLM service tests: one start for all): `--policy
    vllm:DIR` with the same toy policy in-process, and its PRM on vLLM's pooling runner, which agrees with
    transformers to 1e-4 (tests/repirl/test_scoring_vllm.py): the reference is the same search on transformers."""
    params = SearchParams(**{k: v for k, v in GREEDY.items() if k != "question"})
    reference = run_search(hf_policy, load_scorer(server_prms["token-reward"], engine="hf"), TOY_QUESTION, params)
    with httpx.Client(base_url=vllm_server.url, timeout=120) as c:
        cards = c.get("/v1/models").json()["data"]
        out = [c.post("/v1/search", json=GREEDY | {"strategy": s}) for s in ("beam", "dvts", "best-of-n")]
    assert [m["root"].startswith("vllm:") for m in cards if m["kind"] == "policy"] == [True], cards  # in-process
    assert all(r.status_code == 200 for r in out), [r.text for r in out]
    beam, dvts, bon = (r.json() for r in out)
    assert beam["steps"] == reference.best.steps and beam["score"] == pytest.approx(reference.best.score, abs=1e-4)
    assert dvts["answer"] == bon["answer"] == reference.answer


def test_remote_policy_context_is_learnt_and_a_long_question_is_413(api_server, server_prms, tmp_path):
    """Issue 22.9: the remote's context length comes from its /v1/models (`max_model_len`, 256 here) at start, and a
    question that cannot fit is our 413 naming `question`. Before, the question went out, vLLM answered 400 and the
    service relayed it as a 503 with the server's URL and 300 characters of its body. The PRM (byte-level tiny model,
    512 positions) would take the question: only the policy's context refuses it."""
    srv = ServerProc(["--engine", "hf", "--prm", f"tr={server_prms['token-reward']}", "--policy", api_server + "/v1"],
                     env=VLLM_ENV, log=tmp_path / "server.log").wait_ready(timeout=300)
    question = "Start with 3. " + "Add 1, then subtract 1. " * 13 + "What is the result?"  # ~350 tokens
    try:
        r = httpx.post(srv.url + "/v1/search", json=GREEDY | {"question": question}, timeout=120)
        ok = httpx.post(srv.url + "/v1/search", json=GREEDY, timeout=120)
    finally:
        srv.stop()
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["param"] == "question" and "policy's context" in err["message"], err
    assert api_server.split("//")[1] not in r.text
    assert ok.status_code == 200, ok.text  # a question that fits still searches
    assert RemotePolicy(api_server).context_tokens == 256
