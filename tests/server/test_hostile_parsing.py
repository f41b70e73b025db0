"""The worst body the service accepts never freezes it (issue 22.1), over real HTTP: a service with the default limits
(1 MB bodies) on the demo-format transformers PRM, a hostile request in flight, `/livez` polled meanwhile.

Before: `{"query": ["x"], "prompts": ["<|im_start|>user\\n" x N]}` ran a quadratic `findall` on the event loop
(N = 16,000: 13.6 s, every probe waiting as long; a 1 MB body: minutes, enough for Kubernetes to restart the pod).
Now every parser is linear (test_linear_parsers.py) and parsing runs off the event loop, so `/livez` answers within
the 0.5 s the issue sets while each body is handled."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest


MAX_BODY = 1_000_000
CHATML_USER = "<|im_start|>user\n"
LIVEZ_BOUND_S = 0.5


def _fill(make_body, unit: str) -> dict:
    """The body with the most repeats of `unit` that still fits the 1 MB body limit."""
    lo, hi = 1, MAX_BODY
    while lo < hi:  # binary search on the repeat count
        mid = (lo + hi + 1) // 2
        if len(json.dumps(make_body(unit * mid)).encode()) <= MAX_BODY:
            lo = mid
        else:
            hi = mid - 1
    return make_body(unit * lo)


def costliest_pooling_body(url: str, model: str = "tr") -> dict:
    """The /pooling body that costs the service the most tokenizing before its 413 (at the default limits): as many
    texts as `max_items` allows, each just short of what could fit the PRM's context (repirl/token_bounds.py: longer
    ones are refused on their length), all tokenized before the first is refused."""
    from transformers import AutoTokenizer

    from repirl.token_bounds import longest_token_bytes
    from server.settings import Limits

    card = next(m for m in httpx.get(url + "/v1/models").json()["data"] if m["id"] == model)
    context = card["max_model_len"]
    short_of_the_bound = context * longest_token_bytes(AutoTokenizer.from_pretrained(card["root"])) - 64
    return {"model": model, "input": [("12 + 3 = 15\n\n" * context)[:short_of_the_bound]] * Limits().max_items}


HOSTILE = {
    "openrlhf prompt of unclosed user turns": ("/v1/openrlhf/reward", lambda s: {"query": ["x"], "prompts": [s]},
                                               CHATML_USER),
    "openrlhf query of unclosed user turns": ("/v1/openrlhf/reward", lambda s: {"query": [s]}, CHATML_USER),
    "openrlhf label of blank lines after Answer": ("/v1/openrlhf/reward",
                                                   lambda s: {"query": ["x"], "labels": ["Answer" + s]}, "\n"),
    "openrlhf response of end-of-turn tokens": ("/v1/openrlhf/reward",
                                                lambda s: {"query": ["p Answer: 1" + s], "prompts": ["p"]}, "<|im_end|>"),
    "pooling input to tokenize": ("/pooling", lambda s: {"model": "tr", "input": s}, "12 + 3 = 15\n\n"),
    "pooling messages to render": ("/pooling", lambda s: {"model": "tr", "messages": [
        {"role": "user", "content": s}]}, "What is 2+3? "),
    "rerank candidates of blank lines": ("/v1/rerank",
                                         lambda s: {"question": "q", "candidates": ["Answer" + s[: len(s) // 8]] * 8},
                                         "\n"),
}


def _worst_livez_while_handled(url: str, path: str, body: dict) -> tuple[float, int, object]:
    """POST `body` in a thread and poll `/livez` until it is answered: (the slowest poll, polls, its status)."""
    done: dict = {}

    def hostile():
        try:
            done["status"] = httpx.post(url + path, json=body, timeout=300).status_code
        except httpx.HTTPError as e:  # only reached if the service hangs past 300 s
            done["status"] = repr(e)

    worker = threading.Thread(target=hostile, daemon=True)
    worker.start()
    worst, polls = 0.0, 0
    with httpx.Client(base_url=url, timeout=5) as probe:
        while worker.is_alive():
            t0 = time.perf_counter()
            try:
                ok = probe.get("/livez").status_code == 200
            except httpx.TimeoutException:
                ok = False
            worst = max(worst, time.perf_counter() - t0 if ok else float("inf"))
            polls += 1
            time.sleep(0.02)
    worker.join()
    return worst, polls, done["status"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE))
def test_livez_answers_while_the_worst_body_is_parsed(default_limits_server, name):
    """Up to three tries, the best counts: a parser on the event loop stalls every try for the whole parse (13.6 s
    and more before the fix), while a busy CI machine can delay one poll past the bound on its own (seen once: 1.3 s
    for "pooling messages to render" beside vLLM engine starts, where a quiet machine gives 0.08 s; tokenizing 1 MB
    holds the GIL ~0.1 s at a time, and a loaded machine stretches that)."""
    path, make_body, unit = HOSTILE[name]
    body = _fill(make_body, unit)
    tries = []
    for _ in range(3):
        worst, polls, status = _worst_livez_while_handled(default_limits_server.url, path, body)
        assert status in (200, 413, 422), status  # handled, or refused by a limit naming the field
        tries.append(f"{worst:.2f} s over {polls} polls")
        if worst < LIVEZ_BOUND_S:
            break
    assert worst < LIVEZ_BOUND_S, f"{name}: /livez took longer than {LIVEZ_BOUND_S} s on every try: {tries}"


@pytest.mark.slow
def test_a_small_request_is_not_queued_behind_a_flood_of_large_bodies(default_limits_server):
    """16 clients each send a /pooling request of 64 texts, each just short of what the PRM's context could hold
    (~390 KB; every text is tokenized, ~0.3 s in all, then a 413): a 100-byte /v1/score sent while they wait is
    answered before they are. (A single text over that size is refused on its length without tokenizing:
    repirl/token_bounds.py; this was a ~900 KB text, about a second of tokenizing each.) Before
    server/text_work.py every route tokenized on asyncio's default executor (6 threads here, one FIFO): the small
    request waited behind the queue (24 such clients: p50 11.0 s against 11 ms alone; now 27 ms: docs/service.md).
    Counted, not timed: how many of the large requests were answered before the small one (FIFO: 13 of the 16 in a
    run with the turns turned off; in turns: at most the 3 running on the large threads)."""
    from tests.server.conftest import metric, poll

    url = default_limits_server.url
    body = costliest_pooling_body(url)
    size = len(json.dumps(body).encode())
    answered: list[int] = []

    def large():
        answered.append(httpx.post(url + "/pooling", json=body, timeout=300).status_code)

    flood = [threading.Thread(target=large, daemon=True) for _ in range(16)]
    for t in flood:
        t.start()
    with httpx.Client(base_url=url, timeout=300) as c:
        assert poll(lambda: metric(c, "repirl_text_work_queued_bytes") >= 8 * size, timeout=120), "no flood queued"
        r = c.post("/v1/score", json={"question": "What is 2+3?", "steps": ["2+3 = 5", "Answer: 5"]})
        before = len(answered)
        assert r.status_code == 200, r.text
    for t in flood:
        t.join(300)
    assert answered == [413] * 16  # every large input is over the token limit, after tokenizing
    assert before <= 3, f"{before} of the 16 large requests were answered before the small one"
