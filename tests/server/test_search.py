"""/v1/search and /v1/best-of-n over real HTTP: the service as a subprocess (`python -m server --policy ...`) with
the toy policy and a token-reward PRM built from it, every strategy, the SSE stream parsed by a real client,
limits; and an in-process uvicorn with a slow scripted policy to prove that a disconnect stops the search."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from repirl.artifacts import PolicyConfig, init_token_reward_prm
from repirl.policy.base import make_step
from repirl.policy.toy import TOY_QUESTION, build_toy_policy
from repirl.policy import load_policy
from repirl.scoring.loader import load_scorer
from repirl.search import SearchParams, run_search
from repirl.tiny import build_tokenizer
from repirl.trajectory import TrajectoryEncoder
from tests.server.conftest import ServerProc, free_port


@pytest.fixture(scope="session")
def toy_policy_dir():
    return build_toy_policy()


@pytest.fixture(scope="session")
def toy_prm_dir(toy_policy_dir, tmp_path_factory):
    return init_token_reward_prm(toy_policy_dir, tmp_path_factory.mktemp("search_prm") / "prm")


@pytest.fixture(scope="module")
def search_server(toy_policy_dir, toy_prm_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("search_server")
    (d / "config.yaml").write_text("engine: hf\nlimits:\n  max_candidates: 16\n  max_steps: 8\n"
                                   "  max_search_samples: 64\n")
    srv = ServerProc(["--config", str(d / "config.yaml"), "--prm", f"tr={toy_prm_dir}", "--policy", str(toy_policy_dir)],
                     log=d / "server.log").wait_ready(timeout=180)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(search_server):
    with httpx.Client(base_url=search_server.url, timeout=120) as c:
        yield c


@pytest.mark.parametrize("strategy", ["best-of-n", "beam", "dvts"])
def test_each_strategy_over_http_matches_the_library(http, toy_policy_dir, toy_prm_dir, strategy):
    body = {"question": TOY_QUESTION, "strategy": strategy, "n": 4, "beam_width": 2, "seed": 3, "max_steps": 6}
    r = http.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["answer"] in {"14", "16"} and got["steps"][-1] == f"Answer: {got['answer']}"
    assert got["model"] == "tr" and got["policy"] == "policy" and got["strategy"] == strategy
    st = got["stats"]
    assert st["policy_tokens"] > 0 and st["steps"] >= 3 and st["prm_tokens_total"] >= st["prm_tokens_computed"]
    # the same search in this process, same code path (library), same seed: the same pick and score
    ref = run_search(load_policy(toy_policy_dir, engine="transformers"), load_scorer(toy_prm_dir, engine="hf"),
                     TOY_QUESTION, SearchParams(strategy=strategy, n=4, beam_width=2, seed=3, max_steps=6))
    assert got["steps"] == ref.best.steps
    assert got["score"] == pytest.approx(ref.best.score, abs=1e-4)


def test_best_of_n_endpoint_and_votes(http):
    r = http.post("/v1/best-of-n", json={"question": TOY_QUESTION, "n": 8, "select": "majority", "seed": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["strategy"] == "best-of-n" and len(body["candidates"]) == 8
    answers = [c["answer"] for c in body["candidates"]]
    assert body["answer"] == max(set(answers), key=answers.count)


def test_search_stream_is_parsed_by_a_real_sse_client(http):
    events = []
    with http.stream("POST", "/v1/search", json={"question": TOY_QUESTION, "strategy": "beam", "n": 4,
                                                 "beam_width": 2, "seed": 0, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: "):])))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"step"}
    steps = [d for k, d in events if k == "step"]
    assert [s["step"] for s in steps] == list(range(1, len(steps) + 1))
    assert all(len(s["beams"]) <= 2 for s in steps)  # n / beam_width kept
    assert all(b["score"] is not None for s in steps for b in s["beams"] + s["pruned"])
    assert events[-1][1]["stats"]["steps"] == len(steps)


@pytest.mark.parametrize("body,param,status", [
    ({"n": 6, "beam_width": 4, "strategy": "beam"}, "beam_width", 422),
    ({"n": 32}, "n", 413),  # over max_candidates
    ({"n": 16, "max_steps": 8}, "n", 413),  # 16 x 8 = 128 samples over max_search_samples=64
    ({"model": "nope"}, "model", 404),
    ({"policy": "nope"}, "policy", 404),
    ({"select": "best"}, "select", 422),
])
def test_search_errors_name_the_field(http, body, param, status):
    r = http.post("/v1/search", json={"question": TOY_QUESTION} | body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert param in (err["param"] or "") + err["message"]


def test_models_lists_the_policy(http):
    kinds = {c["id"]: c["kind"] for c in http.get("/v1/models").json()["data"]}
    assert kinds["policy"] == "policy" and kinds["tr"] == "prm"


# ---- cancellation: in-process uvicorn (real HTTP), a slow policy whose calls we can count -----------------------


class SlowEndlessPolicy:
    """Never finishes a trajectory; each call takes `delay` seconds and is counted."""

    name = "slow"

    def __init__(self, delay: float = 0.3):
        self.config, self.delay, self.calls = PolicyConfig(), delay, 0
        self.encoder = TrajectoryEncoder(build_tokenizer())

    def sample_steps(self, prefixes, params):
        self.calls += 1
        time.sleep(self.delay)
        return [[make_step(f"1+{len(steps)}={1 + len(steps)}\n\n", [1], [0.0], "\n\n", False, False)
                 for _ in range(params.n)] for _, steps in prefixes]


@pytest.fixture(scope="module")
def inproc(toy_prm_dir):
    import uvicorn

    from server.app import create_app
    from server.settings import Settings

    policy = SlowEndlessPolicy()
    # an in-flight budget of 200 samples: one search of n=2 x 60 steps (120) fits, two do not
    settings = Settings(prm=[f"tr={toy_prm_dir}"], engine="hf",
                        limits={"max_steps": 64, "max_search_samples": 200, "max_search_samples_in_flight": 200})
    app = create_app(settings, policies={"policy": policy})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}", policy
    server.should_exit = True
    thread.join(10)


def _calls_settle(policy, wait: float = 1.5) -> int:
    before = policy.calls
    time.sleep(wait)
    return policy.calls - before


def test_disconnect_during_sse_stops_the_search_within_one_step(inproc):
    url, policy = inproc
    body = {"question": "q?", "strategy": "beam", "n": 2, "beam_width": 1, "max_steps": 60, "stream": True}
    with httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/search", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("event: step"):
                    break  # one step seen; closing the response drops the connection
    at_close = policy.calls
    time.sleep(1.0)
    assert policy.calls <= at_close + 1  # the step in flight may finish; none after it
    assert _calls_settle(policy) == 0
    assert at_close < 60


def test_disconnect_of_a_plain_request_stops_the_search(inproc):
    url, policy = inproc
    start = policy.calls
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/search", json={"question": "q?", "strategy": "beam", "n": 2, "beam_width": 1,
                                             "max_steps": 60}, timeout=1.0)
    at_close = policy.calls
    time.sleep(1.0)
    assert policy.calls <= at_close + 1 and _calls_settle(policy) == 0
    assert policy.calls - start < 60


def test_streams_over_the_in_flight_budget_get_a_real_429(inproc):
    """A streamed search (or chat completion) that would exceed the in-flight budget is refused with 429 and
    Retry-After before any 200, so clients see an ordinary error; the budget comes back when the first ends."""
    import openai

    url, policy = inproc
    body = {"question": "q?", "strategy": "beam", "n": 2, "beam_width": 1, "max_steps": 60}
    start = policy.calls
    first = threading.Thread(target=lambda: pytest.raises(httpx.ReadTimeout, httpx.post, url + "/v1/search",
                                                          json=body, timeout=3.0))
    first.start()
    while policy.calls == start:  # the first search is admitted and running
        time.sleep(0.02)
    r = httpx.post(url + "/v1/search", json=body | {"stream": True}, timeout=10)
    assert r.status_code == 429 and r.headers["retry-after"] and r.json()["error"]["type"] == "queue_full"
    chat = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        chat.chat.completions.create(model="policy", messages=[{"role": "user", "content": "q?"}], stream=True,
                                     extra_body={"search": {k: v for k, v in body.items() if k != "question"}})
    first.join(10)  # its client gave up: the search is cancelled and its samples released
    time.sleep(0.5)
    with httpx.Client(base_url=url, timeout=30) as c:
        with c.stream("POST", "/v1/search", json=body | {"stream": True}) as r2:
            assert r2.status_code == 200
            for line in r2.iter_lines():
                if line.startswith("event: step"):
                    break
    _calls_settle(policy)  # leave no search running for the next test


# ---- particle filtering / Gibbs, adaptive best-of-n, budgets (issue 25) ----------------------------------------
@pytest.mark.parametrize("extra", [{"strategy": "particle-filtering", "ess_threshold": 1.0},
                                   {"strategy": "particle-gibbs", "sweeps": 2, "resampling": "multinomial"},
                                   {"strategy": "adaptive-best-of-n", "round_size": 2}])
def test_new_strategies_over_http_match_the_library(http, toy_policy_dir, toy_prm_dir, extra):
    body = {"question": TOY_QUESTION, "n": 4, "seed": 3, "max_steps": 6} | extra
    r = http.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["strategy"] == extra["strategy"] and got["answer"] in {"14", "16"}
    assert got["select"] == ("majority" if extra["strategy"] == "adaptive-best-of-n" else "weighted")
    ref = run_search(load_policy(toy_policy_dir, engine="transformers"), load_scorer(toy_prm_dir, engine="hf"),
                     TOY_QUESTION, SearchParams(**{k: v for k, v in body.items() if k != "question"}))
    assert got["steps"] == ref.best.steps and got["stats"]["steps"] == ref.stats.steps
    assert got["stats"]["resamplings"] == ref.stats.resamplings


def _sse(http, body):
    events, event = [], None
    with http.stream("POST", "/v1/search", json=body | {"stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: "):])))
    return events


def test_particle_stream_sends_particles_weights_and_resampling(http):
    events = _sse(http, {"question": TOY_QUESTION, "strategy": "particle-gibbs", "n": 4, "sweeps": 2, "seed": 1,
                         "max_steps": 6, "ess_threshold": 1.0, "particle_temperature": 0.05})
    assert events[-1][0] == "result"
    steps = [d for k, d in events if k == "step"]
    assert {s["sweep"] for s in steps} == {1, 2}
    for s in steps:
        assert len(s["beams"]) == len(s["weights"]) == 4 and sum(s["weights"]) == pytest.approx(1.0)
        assert 1.0 <= s["ess"] <= 4.0 + 1e-9
        free = 4 if s["sweep"] == 1 else 3  # from sweep 2 on, one reference particle is kept, not resampled
        assert s["ancestors"] is None or (len(s["ancestors"]) == free and all(0 <= a < 4 for a in s["ancestors"]))
    resampled = sum(s["ancestors"] is not None for s in steps)
    assert resampled >= 1 and events[-1][1]["stats"]["resamplings"] == resampled


def test_a_policy_token_budget_stops_the_search_over_http(http):
    free = http.post("/v1/search", json={"question": TOY_QUESTION, "strategy": "particle-filtering", "n": 4,
                                         "seed": 2, "max_steps": 6}).json()["stats"]
    limit = free["policy_tokens"] // 3
    r = http.post("/v1/search", json={"question": TOY_QUESTION, "strategy": "particle-filtering", "n": 4, "seed": 2,
                                      "max_steps": 6, "budget": {"policy_tokens": limit}})
    assert r.status_code == 200, r.text
    st = r.json()["stats"]
    assert st["stopped_by"] == "policy_tokens" and limit <= st["policy_tokens"] < free["policy_tokens"]
    assert st["steps"] < free["steps"] and free["stopped_by"] is None


@pytest.mark.parametrize("body,param", [
    ({"budget": {"policy_tokens": -1}}, "budget.policy_tokens"),
    ({"budget": {"prm_tokens": 10**12}}, "budget.prm_tokens"),
    ({"budget": {"seconds": "soon"}}, "budget.seconds"),
    ({"budget": {"dollars": 1}}, "budget.dollars"),
    ({"strategy": "particle-filtering", "ess_threshold": 2}, "ess_threshold"),
    ({"strategy": "particle-gibbs", "n": 2, "reference_particles": 2}, "reference_particles"),
    ({"strategy": "particle-gibbs", "n": 4, "sweeps": 8}, "n"),  # 4 x 8 steps x 8 sweeps: 413
    ({"strategy": "adaptive-best-of-n", "select": "naive"}, "select"),
])
def test_new_knobs_are_checked_and_named(http, body, param):
    r = http.post("/v1/search", json={"question": TOY_QUESTION} | body)
    assert r.status_code == (413 if param == "n" else 422), r.text
    assert r.json()["error"]["param"] == param
