"""load_tests/locustfile.py and `make load`'s report, in small: 15 s of locust (headless, in a subprocess: locust
monkey-patches the process that imports it) with one user of every class against the service (tiny token-reward
PRM and the toy policy on transformers, Redis), then the report from its CSVs and the service's /metrics. Every
endpoint must have been called and none may have failed (the bodies are what the service accepts)."""

from __future__ import annotations

import sys

import pytest

from tests.server.conftest import REPO, ServerProc

sys.path.insert(0, str(REPO))
from load_tests import run_load  # noqa: E402

pytestmark = pytest.mark.slow

CLASSES = ["ScoreUser", "RerankUser", "BestOfNUser", "SearchUser", "SearchStreamUser", "MixedUser"]
ENDPOINTS = ["/v1/score", "/v1/rerank", "/v1/best-of-n", "/v1/search", "/v1/search [stream]",
             "/v1/search [stream] first event"]


@pytest.fixture(scope="module")
def load_server(server_prms, redis_main, tmp_path_factory):
    from repirl.policy.toy import build_toy_policy

    srv = ServerProc(["--prm", f"prm={server_prms['token-reward']}", "--policy", f"hf:{build_toy_policy()}",
                      "--redis-url", redis_main.url], env={"REPIRL_ENGINE": "hf"},
                     log=tmp_path_factory.mktemp("load_server") / "server.log").wait_ready()
    yield srv
    srv.stop()


def test_locustfile_runs_every_user_class_without_failures(load_server, server_prms, tmp_path):
    # no character cap: the locustfile sizes its GSM8K items to the PRM's max_model_len from /v1/models (512 here;
    # GSM8K solutions reach ~800 tokens, so without the sizing /v1/score and /v1/rerank answer 413s)
    before = run_load.scrape(load_server.url)
    # 15 s: the sized GSM8K items run up to the PRM's 512 tokens (a rerank of 8 is ~4,000 tokens), and locust writes
    # its stats CSV once a second, so with 5 s on a loaded 2-core machine the first answers came after its last write
    rc = run_load.run_locust(load_server.url, seconds=15, users=len(CLASSES), spawn_rate=len(CLASSES),
                             profile=CLASSES, csv_prefix=tmp_path / "locust",
                             env={"HF_HUB_OFFLINE": "1"})
    after = run_load.scrape(load_server.url)
    stats = {r["Name"]: r for r in run_load.read_stats(tmp_path / "locust")}
    assert rc == 0, stats
    for name in ENDPOINTS:
        assert name in stats and int(stats[name]["Request Count"]) >= 1, (name, sorted(stats))
        assert int(stats[name]["Failure Count"]) == 0, stats[name]
    assert int(stats["Aggregated"]["Failure Count"]) == 0
    assert run_load._delta(before, after, "repirl_batch_items_count") >= 1  # the PRM really ran

    meta = {"date": "test", "profile": " ".join(CLASSES), "users": len(CLASSES), "seconds": 15, "service": "test",
            "cache": "Redis", "locust_rc": rc, "machine": "test", "data": "test"}
    report = run_load.write_report(tmp_path / "report", tmp_path / "locust", before, after, meta).read_text()
    for name in ENDPOINTS:
        assert f"| `{name}` |" in report
    assert "hit ratio" in report and "items** and" in report and "HTTP statuses: " in report
    assert (tmp_path / "report" / "load_latency.png").stat().st_size > 1000


def test_items_are_sized_to_the_served_prm(load_server):
    """What the locustfile does at its start: /v1/models' max_model_len (512), the PRM's own tokenizer, every item
    left fits (its exact token count), solutions too long are cut to whole steps, and the line says what was left out."""
    from load_tests import load_data

    line = load_data.size_to_service(load_server.url)
    card = load_data.served_prm(load_server.url)
    counter, exact = load_data.prefix_lengths(card)
    assert card["max_model_len"] == 512 and exact and "max_model_len 512" in line and "left out" in line, line
    budget = 512 - load_data.MARGIN_TOKENS
    assert load_data.GSM8K and load_data.DEMO
    for question, sols in load_data.GSM8K:
        assert all(sol and counter(question, sol)[-1] <= budget for sol in sols)
    lengths = [counter(q, s)[-1] for q, sols in load_data.GSM8K for s in sols]
    assert max(lengths) > budget - 100  # trimmed ones are kept, not only the short ones
