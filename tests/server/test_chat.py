"""/v1/chat/completions with the official `openai` client, unchanged, over real HTTP (uvicorn in this process; the
app loads the toy policy from settings like `repirl serve --policy` does)."""

from __future__ import annotations

import threading
import time

import openai
import pytest

from repirl.artifacts import init_token_reward_prm
from repirl.policy import load_policy
from repirl.policy.toy import TOY_QUESTION, build_toy_policy
from repirl.scoring.loader import load_scorer
from repirl.search import SearchParams, run_search
from tests.server.conftest import free_port


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    import uvicorn

    from server.app import create_app
    from server.settings import Settings

    policy_dir = build_toy_policy()
    prm_dir = init_token_reward_prm(policy_dir, tmp_path_factory.mktemp("chat_prm") / "prm")
    settings = Settings(prm=[f"tr={prm_dir}"], policy=str(policy_dir), engine="hf", api_key_file=None)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{server.config.port}", policy_dir, prm_dir
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def client(chat_server):
    return openai.OpenAI(base_url=chat_server[0] + "/v1", api_key="not-checked", max_retries=0, timeout=120)


def test_openai_client_gets_the_search_pick(client, chat_server):
    _, policy_dir, prm_dir = chat_server
    search = {"strategy": "beam", "n": 4, "beam_width": 2, "max_steps": 6}
    resp = client.chat.completions.create(model="policy", messages=[{"role": "user", "content": TOY_QUESTION}],
                                          temperature=0.8, seed=5, extra_body={"search": search, "return_trace": True})
    assert resp.object == "chat.completion" and resp.choices[0].finish_reason == "stop"
    content = resp.choices[0].message.content
    info = resp.model_extra["search"]
    assert content.endswith(f"Answer: {info['answer']}") and info["answer"] in {"14", "16"}
    assert resp.usage.completion_tokens == info["stats"]["policy_tokens"] > 0
    assert info["trace"]["steps"] and info["trace"]["steps"][0]["step"] == 1
    # the same search run by the library: the same steps (same code, same seed)
    ref = run_search(load_policy(policy_dir, engine="transformers"), load_scorer(prm_dir, engine="hf"), TOY_QUESTION,
                     SearchParams(temperature=0.8, seed=5, **search))
    assert content == "\n\n".join(ref.best.steps)


def test_default_search_and_prm_as_model(client):
    resp = client.chat.completions.create(model="tr", messages=[{"role": "system", "content": "be brief"},
                                                                {"role": "user", "content": TOY_QUESTION}])
    assert resp.model_extra["search"]["strategy"] == "best-of-n" and resp.model_extra["search"]["prm"] == "tr"
    assert resp.model_extra["search"].get("trace") is None


def test_openai_errors(client):
    with pytest.raises(openai.NotFoundError, match="not loaded"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": TOY_QUESTION}])
    with pytest.raises(openai.NotFoundError, match="not loaded"):  # a streamed request fails before its 200
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": TOY_QUESTION}], stream=True)
    with pytest.raises(openai.UnprocessableEntityError, match="beam_width"):
        client.chat.completions.create(model="policy", messages=[{"role": "user", "content": TOY_QUESTION}],
                                       extra_body={"search": {"strategy": "beam", "n": 6, "beam_width": 4}})
    with pytest.raises(openai.UnprocessableEntityError, match="user message"):
        client.chat.completions.create(model="policy", messages=[{"role": "system", "content": "hi"}])


def test_openai_client_streams_the_same_completion(client):
    """stream=True: OpenAI chunks that the official client parses; joined, they are the non-streamed completion."""
    search = {"strategy": "beam", "n": 4, "beam_width": 2, "max_steps": 6}
    kwargs = dict(model="policy", messages=[{"role": "user", "content": TOY_QUESTION}], temperature=0.8, seed=5,
                  extra_body={"search": search, "return_trace": True})
    plain = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert all(c.object == "chat.completion.chunk" for c in chunks) and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert finals[0].model_extra["search"]["answer"] == plain.model_extra["search"]["answer"]
    steps = [c.model_extra["search_step"] for c in chunks if not c.choices and c.model_extra.get("search_step")]
    assert [s["step"] for s in steps] == [s["step"] for s in plain.model_extra["search"]["trace"]["steps"]]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_openai_client_sends_a_budget_and_particle_search_in_extra_body(client):
    """extra_body's top-level `budget` (over search.budget) stops a particle filter early; the stream's trace
    chunks carry the particles' weights."""
    kwargs = dict(model="policy", messages=[{"role": "user", "content": TOY_QUESTION}], temperature=0.8, seed=2,
                  extra_body={"search": {"strategy": "particle-filtering", "n": 4, "max_steps": 6,
                                         "budget": {"policy_tokens": 10**6}},
                              "budget": {"policy_tokens": 20}, "return_trace": True})
    resp = client.chat.completions.create(**kwargs)
    stats = resp.model_extra["search"]["stats"]
    assert stats["stopped_by"] == "policy_tokens" and 20 <= stats["policy_tokens"] == resp.usage.completion_tokens
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    steps = [c.model_extra["search_step"] for c in chunks if not c.choices and c.model_extra.get("search_step")]
    assert steps and all(len(s["weights"]) == 4 for s in steps)
    with pytest.raises(openai.UnprocessableEntityError, match="budget.seconds"):
        client.chat.completions.create(model="policy", messages=[{"role": "user", "content": TOY_QUESTION}],
                                       extra_body={"budget": {"seconds": 0}})
