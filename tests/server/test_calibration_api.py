"""p_correct over real HTTP: the service in a subprocess (`python -m server`) with a calibrated token-reward PRM, an
uncalibrated one and the toy policy. Every p_correct must equal sigmoid(a * raw + b) computed here from the raw
rewards the same response returns; `aggregate_input: probability` must aggregate those probabilities instead."""

from __future__ import annotations

import json
import math

import httpx
import pytest

from repirl.artifacts import PRM_JSON, atomic_write_text, init_token_reward_prm, load_prm_config, scoring_revision
from repirl.calibration import Calibration
from repirl.policy.toy import TOY_QUESTION, build_toy_policy
from tests.server.conftest import ServerProc

A, B = 10.0, 0.3  # the untrained head's rewards are ~ +-0.1: p_correct then spreads over ~0.3-0.8
STEPS = ["3+4=7", "7*2=14", "Answer: 14"]


def p_of(r: float) -> float:
    return 1 / (1 + math.exp(-(A * r + B)))


@pytest.fixture(scope="module")
def calibrated_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("calibration_server")
    import torch

    policy = build_toy_policy()
    torch.manual_seed(0)  # the PRMs' fresh heads: the same rewards on every run
    cal, plain = init_token_reward_prm(policy, d / "cal"), init_token_reward_prm(policy, d / "plain")
    cfg = load_prm_config(cal)  # prm.json gains `calibration`, as `repirl calibrate` writes it
    cfg.calibration = Calibration(a=A, b=B, revision=scoring_revision(cfg), n_steps=1)
    atomic_write_text(cal / PRM_JSON, cfg.model_dump_json(indent=2))
    (d / "config.yaml").write_text("engine: hf\nlimits:\n  max_candidates: 8\n  max_steps: 8\n")
    srv = ServerProc(["--config", str(d / "config.yaml"), "--prm", f"cal={cal}", "--prm", f"plain={plain}",
                      "--policy", f"hf:{policy}"], log=d / "server.log").wait_ready(timeout=180)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def http(calibrated_server):
    with httpx.Client(base_url=calibrated_server.url, timeout=120) as c:
        yield c


def test_score_returns_p_correct_from_the_raw_rewards(http):
    r = http.post("/v1/score", json={"model": "cal", "question": TOY_QUESTION, "steps": STEPS,
                                     "return_token_rewards": True})
    assert r.status_code == 200, r.text
    body = r.json()
    item = body["data"][0]
    assert body["aggregate_input"] == "raw"
    assert item["p_correct"] == pytest.approx([p_of(x) for x in item["step_rewards"]], abs=1e-12)
    tokens = [t for step in item["token_rewards"] for t in step]
    assert item["score"] == pytest.approx(sum(tokens) / len(tokens))  # raw stays the default aggregation input


@pytest.mark.parametrize("aggregation,combine", [
    ("mean-token", lambda p: sum(p) / len(p)),  # no token probabilities: the mean over steps
    ("prod", math.prod),
    ("min", min),
    ("last", lambda p: p[-1]),
])
def test_probability_aggregation_reads_p_correct(http, aggregation, combine):
    body = {"model": "cal", "question": TOY_QUESTION, "steps": STEPS, "aggregation": aggregation}
    raw = http.post("/v1/score", json=body).json()["data"][0]
    prob = http.post("/v1/score", json=body | {"aggregate_input": "probability"}).json()
    item = prob["data"][0]
    assert prob["aggregate_input"] == "probability" and item["cached_steps"] == len(STEPS)  # cached raws reused
    assert item["step_rewards"] == raw["step_rewards"] and item["p_correct"] == raw["p_correct"]
    want = combine([p_of(x) for x in raw["step_rewards"]])
    assert item["score"] == pytest.approx(want, abs=1e-12)
    assert abs(item["score"] - raw["score"]) > 1e-3  # probabilities (~0.3-0.8) vs raw rewards (~ +-0.1)


def test_uncalibrated_prm_has_no_p_correct_and_refuses_probability(http):
    r = http.post("/v1/score", json={"model": "plain", "question": TOY_QUESTION, "steps": STEPS})
    assert r.status_code == 200 and "p_correct" not in r.json()["data"][0]
    r = http.post("/v1/score", json={"model": "plain", "question": TOY_QUESTION, "steps": STEPS,
                                     "aggregate_input": "probability"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "aggregate_input", r.text
    assert "calibrat" in r.json()["error"]["message"]
    r = http.post("/v1/score", json={"model": "cal", "question": TOY_QUESTION, "steps": STEPS,
                                     "aggregate_input": "prob"})
    assert r.status_code == 422 and "aggregate_input" in r.json()["error"]["param"], r.text
    r = http.post("/v1/best-of-n", json={"model": "plain", "question": TOY_QUESTION, "n": 2,
                                         "aggregate_input": "probability"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "aggregate_input", r.text


def test_openapi_documents_the_option(http):
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    for name in ("ScoreRequest", "SearchRequest", "BestOfNRequest"):
        prop = schemas[name]["properties"]["aggregate_input"]
        assert set(prop["enum"]) == {"raw", "probability"} and prop["default"] == "raw"
        assert "p_correct" in prop["description"]
    assert "p_correct" in schemas["ScoreResult"]["properties"]
    assert "p_correct" in schemas["CandidateOut"]["properties"]


def test_search_results_carry_p_correct_and_aggregate_probabilities(http):
    body = {"model": "cal", "question": TOY_QUESTION, "n": 4, "seed": 3, "max_steps": 6}
    raw = http.post("/v1/best-of-n", json=body)
    prob = http.post("/v1/best-of-n", json=body | {"aggregate_input": "probability"})
    assert raw.status_code == 200 and prob.status_code == 200, raw.text + prob.text
    raw, prob = raw.json(), prob.json()
    assert prob["aggregate_input"] == "probability" and raw["aggregate_input"] == "raw"
    by_id = {c["id"]: c for c in raw["candidates"]}
    for c in prob["candidates"]:
        p = [p_of(x) for x in c["step_rewards"]]
        assert c["p_correct"] == pytest.approx(p, abs=1e-12)
        assert c["score"] == pytest.approx(sum(p) / len(p), abs=1e-12)  # mean-token over step probabilities
        same = by_id[c["id"]]  # same seed: same samples, same raw rewards, raw score
        assert same["step_rewards"] == c["step_rewards"] and same["p_correct"] == c["p_correct"]
        assert abs(same["score"] - c["score"]) > 1e-3
    plain = http.post("/v1/best-of-n", json=body | {"model": "plain"}).json()
    assert all(c["p_correct"] is None for c in plain["candidates"])


def test_search_stream_step_events_carry_p_correct(http):
    body = {"model": "cal", "question": TOY_QUESTION, "strategy": "beam", "n": 2, "beam_width": 1, "seed": 1,
            "max_steps": 4, "stream": True}
    events, kind = [], None
    with http.stream("POST", "/v1/search", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: "):])))
    steps = [e for k, e in events if k == "step"]
    assert steps and events[-1][0] == "result"
    for e in steps:
        for c in e["beams"] + e["completed"]:
            assert c["p_correct"] == pytest.approx([p_of(x) for x in c["step_rewards"]], abs=1e-12)


CHAT = f"<|im_start|>user\n{TOY_QUESTION}<|im_end|>\n<|im_start|>assistant\n"


def test_openrlhf_unlabelled_scores_are_the_prms_value(http):
    """OpenRLHF without --data.label_key sends "" as every label (openrlhf/datasets/prompts_dataset.py:44, 0.11.2):
    `scores` is then the PRM's value in [0, 1]: the mean p_correct (mean-token, the PRM's default aggregation, over
    step probabilities) for the calibrated PRM, the mean sigmoid of the raw step rewards for the uncalibrated one."""
    body = {"query": [CHAT + "\n\n".join(STEPS) + "<|im_end|>"], "prompts": [CHAT], "labels": [""]}
    for model, value in (("cal", p_of), ("plain", lambda r: 1 / (1 + math.exp(-r)))):
        raw = http.post("/v1/score", json={"model": model, "question": TOY_QUESTION, "steps": STEPS}).json()["data"][0]
        r = http.post(f"/v1/openrlhf/reward?model={model}", json=body)
        assert r.status_code == 200, r.text
        got = r.json()
        want = sum(value(x) for x in raw["step_rewards"]) / len(STEPS)
        assert got["scores"] == [pytest.approx(want, abs=1e-12)] and got["extra_logs"]["prm_value"] == got["scores"]
        assert got["rewards"] == [pytest.approx(raw["score"], abs=1e-12)] and got["extra_logs"]["labelled"] == [0.0]
        assert 0.0 < want < 1.0


def test_search_and_learn_values_are_p_correct_or_sigmoid(calibrated_server, http):
    """search-and-learn's PRMs give a probability per step (sal/models/reward_models.py:49-61): the SDK adapter gives
    the calibrated PRM's p_correct, and sigmoid(raw) for the uncalibrated one."""
    from repirl_client.adapters.search_and_learn import RepirlPRM

    raw = http.post("/v1/score", json={"model": "cal", "question": TOY_QUESTION, "steps": STEPS}).json()["data"][0]
    cal = RepirlPRM(None, base_url=calibrated_server.url, model="cal")
    plain = RepirlPRM(None, base_url=calibrated_server.url, model="plain")
    completion = "\n\n".join(STEPS)
    assert cal.score([TOY_QUESTION], [[completion]]) == [[pytest.approx([p_of(x) for x in raw["step_rewards"]],
                                                                         abs=1e-12)]]
    assert cal.value_kind == "p_correct"
    plain_raw = http.post("/v1/score", json={"model": "plain", "question": TOY_QUESTION,
                                             "steps": STEPS}).json()["data"][0]["step_rewards"]
    assert plain.score([TOY_QUESTION], [[completion]]) == [[pytest.approx([1 / (1 + math.exp(-x)) for x in plain_raw],
                                                                           abs=1e-12)]]
    assert plain.value_kind == "sigmoid"


def test_openrlhf_probability_format_scores_its_own_step_values(main_server):
    """A qwen-step-tag PRM's step rewards are probabilities already (repirl/scoring/formats.py): an unlabelled
    sample's `scores` is their mean (its default aggregation), unchanged by any sigmoid."""
    from repirl.scoring.tiny_prms import QWEN_TAG
    from tests.server.conftest import API_KEY

    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=main_server.url, headers=headers, timeout=120) as c:
        raw = c.post("/v1/score", json={"model": "qwen", "question": TOY_QUESTION, "steps": STEPS,
                                        "aggregation": "mean-token"}).json()["data"][0]
        got = c.post("/v1/openrlhf/reward?model=qwen&aggregation=mean-token",
                     json={"query": [CHAT + QWEN_TAG.join(STEPS) + QWEN_TAG], "prompts": [CHAT],
                           "labels": ["  "]}).json()  # the steps at the PRM's separator, its step tag
    assert all(0.0 <= x <= 1.0 for x in raw["step_rewards"])
    assert got["extra_logs"]["prm_steps"] == [3.0]
    assert got["scores"] == [pytest.approx(sum(raw["step_rewards"]) / len(STEPS), abs=1e-12)]
