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


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HOSTILE))
def test_livez_answers_while_the_worst_body_is_parsed(default_limits_server, name):
    path, make_body, unit = HOSTILE[name]
    body = _fill(make_body, unit)
    url = default_limits_server.url
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
            worst = max(worst, time.perf_counter() - t0)
            polls += 1
            assert ok and worst < LIVEZ_BOUND_S, f"{name}: /livez took {worst:.2f} s while the body was handled"
            time.sleep(0.02)
    assert done["status"] in (200, 413, 422), done  # handled, or refused by a limit naming the field
    assert worst < LIVEZ_BOUND_S, f"{name}: /livez worst {worst:.2f} s over {polls} polls"
