"""Locust scenarios for the repirl service (`make load` runs them headless and writes a report: load_tests/run_load.py).

Users (pick some on the command line, e.g. `locust -f load_tests/locustfile.py ScoreUser RerankUser`; default: all):
  ScoreUser         /v1/score: 1-4 real GSM8K solutions per request (the four sampled solutions per test question
                    of ../shared/data/gsm8k/model_solutions.jsonl, and the reference solutions) or demo-task ones
  RerankUser        /v1/rerank: a candidate set sharing a prefix (a reference solution's first steps, then
                    different continuations): the shared steps are prefix-cache hits after the first set
  BestOfNUser       /v1/best-of-n on a demo-task question (the policy samples, the PRM picks)
  SearchUser        /v1/search, step beam search, one JSON answer
  SearchStreamUser  /v1/search with `stream: true`: recorded as "/v1/search [stream]" (until the result event) and
                    "/v1/search [stream] first event" (time to the first step event)
  MixedUser         all of the above in one user, weighted like a serving mix (score 6 : rerank 3 : best-of-n 1 :
                    search 1 : stream 1)

At the start the items are sized to the served PRM: GET /v1/models gives its `max_model_len`, a solution longer than
that is cut to its longest prefix of whole steps that fits, one whose first step does not fit is left out; what was
kept, trimmed and left out is printed at the start and at the end (load_data.size_to_service).

Settings (environment): REPIRL_API_KEY (sent as a bearer key), REPIRL_LOAD_PRM (PRM name; default the service's
first), REPIRL_LOAD_MAX_CHARS (an optional cap on question + solution characters), REPIRL_GSM8K_DIR (default ../shared/data/gsm8k), REPIRL_LOAD_SEARCH_N (4), REPIRL_LOAD_POOL (64: candidate sets come from the first 64 questions of each source,
so they recur and their shared prefixes hit the cache).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import requests
from locust import HttpUser, between, events, task

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from load_tests.load_data import DEMO, SEARCH_N, candidate_set, load, score_items, size_to_service  # noqa: E402

PRM = os.environ.get("REPIRL_LOAD_PRM") or None
HEADERS = {"Authorization": f"Bearer {os.environ['REPIRL_API_KEY']}"} if os.environ.get("REPIRL_API_KEY") else {}
load()
SIZING: list[str] = []


@events.init.add_listener
def _size_items_at_init(environment, **_):
    """With --host the sizing runs before the run's clock starts (it takes a few seconds: every solution tokenized)."""
    host = getattr(environment.parsed_options, "host", None) if environment.parsed_options else None
    _size_items(environment, host=host or environment.host)


@events.test_start.add_listener
def _size_items(environment, host: str | None = None, **_):
    """Else at the start of the run (the host typed into the web UI), before any user runs."""
    host = host or environment.host
    if not SIZING and host:
        SIZING.append(size_to_service(host, HEADERS, PRM))
        print(f"repirl load data: {SIZING[0]}", flush=True)


@events.quitting.add_listener
def _report_sizing(environment, **_):
    if SIZING:
        print(f"repirl load data: {SIZING[0]}", flush=True)


def _with_model(body: dict) -> dict:
    return {**body, "model": PRM} if PRM else body


def _failure(status: int, headers, text: str) -> str:
    """A failed request's message; a 429 says whether it carried Retry-After (`make soak` allows only those)."""
    if status == 429:
        return f"429 Retry-After={headers.get('retry-after')}: {text[:120]}"
    return f"{status}: {text[:200]}"


class RepirlUser(HttpUser):
    abstract = True
    wait_time = between(0.0, 0.1)

    def on_start(self):
        self.rng = random.Random(id(self))
        self.client.headers.update(HEADERS)

    def _post(self, path: str, body: dict, name: str | None = None):
        with self.client.post(path, json=body, name=name or path, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(_failure(r.status_code, r.headers, r.text))

    def do_score(self):
        self._post("/v1/score", _with_model({"items": score_items(self.rng)}))

    def do_rerank(self):
        question, cands = candidate_set(self.rng)
        self._post("/v1/rerank", _with_model({"question": question, "candidates": cands,
                                              "voting": self.rng.choice(["none", "majority", "weighted"])}))

    def _search_body(self, strategy: str) -> dict:
        question, _ = self.rng.choice(DEMO)
        body = {"question": question, "n": SEARCH_N, "max_steps": 6, "temperature": 0.8, "return_candidates": False}
        if strategy == "beam":
            body |= {"strategy": "beam", "beam_width": 2}
        return _with_model(body)

    def do_best_of_n(self):
        self._post("/v1/best-of-n", self._search_body("best-of-n"))

    def do_search(self):
        self._post("/v1/search", self._search_body("beam"))

    def do_search_stream(self):
        """Timed until the `result` event (locust's own timing of a stream ends at the headers)."""
        name = "/v1/search [stream]"
        t0, first, size, exc = time.perf_counter(), None, 0, None
        try:
            with requests.post(self.host + "/v1/search", json=self._search_body("beam") | {"stream": True},
                               headers=HEADERS, stream=True, timeout=300) as r:
                if r.status_code != 200:
                    raise RuntimeError(_failure(r.status_code, r.headers, r.text))
                kinds = []
                for line in r.iter_lines(decode_unicode=True):
                    size += len(line or "")
                    if line and line.startswith("event: "):
                        kinds.append(line[7:])
                        if first is None:
                            first = time.perf_counter()
                if not kinds or kinds[-1] != "result":
                    raise RuntimeError(f"stream ended without a result event: {kinds}")
        except Exception as e:  # noqa: BLE001 - reported to locust as this request's failure
            exc = e
        fire = self.environment.events.request.fire
        if first is not None:
            fire(request_type="POST", name=name + " first event", response_time=(first - t0) * 1000,
                 response_length=0, exception=None, context={})
        fire(request_type="POST", name=name, response_time=(time.perf_counter() - t0) * 1000,
             response_length=size, exception=exc, context={})


class ScoreUser(RepirlUser):
    @task
    def score(self):
        self.do_score()


class RerankUser(RepirlUser):
    @task
    def rerank(self):
        self.do_rerank()


class BestOfNUser(RepirlUser):
    @task
    def best_of_n(self):
        self.do_best_of_n()


class SearchUser(RepirlUser):
    @task
    def search(self):
        self.do_search()


class SearchStreamUser(RepirlUser):
    @task
    def search_stream(self):
        self.do_search_stream()


class MixedUser(RepirlUser):
    @task(6)
    def score(self):
        self.do_score()

    @task(3)
    def rerank(self):
        self.do_rerank()

    @task(1)
    def best_of_n(self):
        self.do_best_of_n()

    @task(1)
    def search(self):
        self.do_search()

    @task(1)
    def search_stream(self):
        self.do_search_stream()
