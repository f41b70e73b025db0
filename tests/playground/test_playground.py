"""/playground end to end: a real browser on the page the service serves, every number on it checked against what
the API answers (or what the server streamed), the stop button checked on the server's own in-flight gauge."""

from __future__ import annotations

import re

import httpx
import pytest

from repirl.policy.toy import TOY_QUESTION
from tests.playground.conftest import API_KEY, connect, parse_sse, read_metric, screenshot, wait_for_metric

expect = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)").expect

SOLUTION = ["3+4=7", "7*2=15", "15+1=16", "Answer: 16"]


def rgb(css: str) -> tuple[int, int, int]:
    r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
    return r, g, b


def test_page_is_public_self_contained_and_sends_the_key(page, server):
    bare = httpx.get(server.url + "/playground")
    assert bare.status_code == 200 and bare.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in bare.headers["content-security-policy"]  # nothing but this origin loads
    for asset in ("app.js", "style.css"):
        assert httpx.get(f"{server.url}/playground/{asset}").status_code == 200
    assert httpx.get(server.url + "/v1/models").status_code == 401  # the page is public, the API is not

    expect(page.locator("#connection")).to_have_text("this server needs an API key")
    connect(page)
    expect(page.locator("#score-model-a option")).to_have_count(2)
    page.click("#score-run")
    expect(page.locator("#score-out-a li.step")).to_have_count(3)

    fetched = [url for url, _ in page.log.requests if not url.startswith("data:")]
    assert fetched and all(url.startswith(server.url + "/") for url in fetched)
    api_calls = [(url, auth) for url, auth in page.log.requests if "/v1/" in url]
    assert len(api_calls) >= 3  # models (without a key, then with it), score x 2 PRMs
    assert all(auth == f"Bearer {API_KEY}" for _, auth in api_calls[1:])  # every call after the key was typed
    kept = page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]")
    assert kept == [0, 0, ""]  # the key lives in the page's memory only


def test_score_colours_each_step_and_flags_the_first_below_the_threshold(page, api):
    expected, calibrated = {}, {}
    for model in ("toy", "qwen"):
        r = api.post("/v1/score", json={"question": TOY_QUESTION, "steps": SOLUTION, "model": model})
        assert r.status_code == 200, r.text
        item = r.json()["data"][0]
        calibrated[model] = bool(item.get("p_correct"))  # the page colours p_correct when the API has it
        expected[model] = item["p_correct"] if calibrated[model] else item["step_rewards"]
    values = expected["toy"]
    # a threshold whose first step below it is as late as possible (a later step lower than every earlier one)
    late = [k for k in range(1, len(values)) if values[k] < min(values[:k])]
    k = late[-1] if late else 0
    threshold = (values[k] + min(values[:k])) / 2 if k else values[0] + 1e-3
    if values[k] < round(threshold, 3) <= min(values[:k] or [float("inf")]):
        threshold = round(threshold, 3)  # easier to read in the screenshot
    assert next(i for i, v in enumerate(values) if v < threshold) == k

    connect(page)
    page.fill("#score-solution", "\n\n".join(SOLUTION))
    page.click("#score-run")
    steps_a = page.locator("#score-out-a li.step")
    expect(steps_a).to_have_count(len(SOLUTION))
    # raw rewards have no fixed scale: the threshold starts at the solution's mean (probabilities: 0.5)
    auto = 0.5 if calibrated["toy"] else sum(values) / len(values)
    assert float(page.input_value("#score-threshold-a")) == pytest.approx(auto, rel=1e-3)
    page.fill("#score-threshold-a", repr(threshold))
    expect(page.locator("#score-out-a li.flagged")).to_have_attribute("data-index", str(k))
    expect(page.locator("#score-out-a li.flagged .flag")).to_have_text(re.compile("first step below"))
    expect(page.locator("#score-out-a li.flagged")).to_have_count(1)

    for side, model, thr in (("a", "toy", threshold), ("b", "qwen", 0.5)):  # qwen: a probability, default 0.5
        steps = page.locator(f"#score-out-{side} li.step")
        expect(steps).to_have_count(len(SOLUTION))
        assert float(page.input_value(f"#score-threshold-{side}")) == pytest.approx(thr)
        for i, want in enumerate(expected[model]):
            li = steps.nth(i)
            assert float(li.get_attribute("data-value")) == pytest.approx(want, abs=1e-6)
            red, green, _ = rgb(li.evaluate("e => getComputedStyle(e).backgroundColor"))
            if want < thr:  # below: red to orange; at or above: yellow-green to green
                assert li.get_attribute("data-below") == "true" and red > green, (model, i, want, red, green)
            else:
                assert li.get_attribute("data-below") == "false" and green > red, (model, i, want, red, green)
        first = next((i for i, v in enumerate(expected[model]) if v < thr), None)
        flagged = page.locator(f"#score-out-{side} li.flagged")
        if first is None:
            expect(flagged).to_have_count(0)
        else:
            expect(flagged).to_have_attribute("data-index", str(first))

    # the aggregation menu re-scores: the shown score is the API's score under that aggregation
    want = api.post("/v1/score", json={"question": TOY_QUESTION, "steps": SOLUTION, "model": "toy",
                                       "aggregation": "min"}).json()
    assert want["aggregation"] == "min"
    page.select_option("#score-aggregation", "min")
    score = page.locator("#score-out-a .score")
    expect(score).to_have_attribute("data-aggregation", "min")
    assert float(score.get_attribute("data-score")) == pytest.approx(want["data"][0]["score"], abs=1e-9)
    screenshot(page, "score")


def test_rerank_shows_the_ranking_votes_and_the_choice(page, api):
    connect(page)
    page.click("#tabs button[data-view=rerank]")
    page.select_option("#rerank-voting", "majority")
    text = page.input_value("#rerank-candidates")
    candidates = [[s.strip() for s in block.strip().split("\n\n")] for block in text.split("\n---\n")]
    assert len(candidates) == 4
    want = api.post("/v1/rerank", json={"question": TOY_QUESTION, "model": "toy", "voting": "majority",
                                        "candidates": [{"steps": c} for c in candidates]}).json()
    page.click("#rerank-run")
    rows = page.locator("#rerank-table tr.rank-row")
    expect(rows).to_have_count(4)
    assert [int(rows.nth(i).get_attribute("data-index")) for i in range(4)] == want["ranking"]
    for i, r in enumerate(want["results"]):
        assert float(rows.nth(i).get_attribute("data-score")) == pytest.approx(r["score"], abs=1e-9)
    votes = page.locator("#rerank-votes .vote")
    shown = {votes.nth(i).get_attribute("data-answer"): float(votes.nth(i).get_attribute("data-votes"))
             for i in range(votes.count())}
    assert shown == want["selected"]["votes"] == {"14": 2.0, "16": 1.0, "15": 1.0}
    chosen = want["selected"]["index"]
    expect(page.locator("#rerank-table tr.chosen")).to_have_attribute("data-index", str(chosen))
    expect(page.locator("#rerank-chosen")).to_have_attribute("data-index", str(chosen))
    expect(page.locator("#rerank-votes .vote.winner")).to_have_attribute("data-answer", "14")
    page.select_option("#rerank-voting", "weighted")
    page.click("#rerank-run")
    expect(page.locator("#rerank-votes b")).to_have_text("votes per answer (weighted)")
    screenshot(page, "rerank")


def test_beam_search_draws_every_streamed_candidate_as_the_tree_grows(page):
    connect(page)
    page.click("#tabs button[data-view=search]")
    page.select_option("#search-strategy", "beam")
    for field, value in (("n", "16"), ("beam-width", "8"), ("temperature", "2"), ("seed", "2")):
        page.fill(f"#search-{field}", value)
    with page.expect_response(lambda r: r.url.endswith("/v1/search")) as response:
        page.click("#search-run")
    expect(page.locator("#search-status")).to_have_attribute("data-state", "done")
    events = parse_sse(response.value.body().decode())  # what the server streamed, read by the browser's network layer
    steps = [data for kind, data in events if kind == "step"]
    result = next(data for kind, data in events if kind == "result")
    assert len(steps) >= 2 and [kind for kind, _ in events][-1] == "result"

    seen, pruned, rewards, cumulative = set(), set(), {}, []
    for ev in steps:
        for group in ("beams", "pruned", "completed"):
            for c in ev[group]:
                seen.add(c["id"])
                rewards[c["id"]] = c["step_rewards"][len(c["steps"]) - 1] if c["steps"] else None
                if group == "pruned":
                    pruned.add(c["id"])
        cumulative.append(len(seen))
    assert pruned and seen - pruned  # kept and pruned branches both drawn

    nodes = page.locator("#search-tree g.node:not(.root)")
    expect(nodes).to_have_count(len(seen))
    counters = page.locator("#search-counters")
    expect(counters).to_have_attribute("data-step-events", str(len(steps)))
    expect(counters).to_have_attribute("data-result-events", "1")
    # drawn as the events came: the node count after each step event is the candidates streamed so far
    assert page.evaluate("window.__playground.drawnAfterEvent") == cumulative
    drawn = {int(nodes.nth(i).get_attribute("data-id")): nodes.nth(i) for i in range(nodes.count())}
    assert set(drawn) == seen
    assert {i for i, n in drawn.items() if n.get_attribute("data-state") == "pruned"} == pruned
    for i, node in drawn.items():  # the step reward on each node is the one streamed for it
        got = node.get_attribute("data-reward")
        if rewards[i] is None:  # an empty first step: nothing scored
            assert got is None
        else:
            assert float(got) == pytest.approx(rewards[i], abs=1e-9), (i, got, rewards[i])
    pick = page.locator("#search-tree g.node[data-pick=true]")
    expect(pick).to_have_count(1)
    pick_id = int(pick.get_attribute("data-id"))
    assert next(c for c in result["candidates"] if c["id"] == pick_id)["steps"] == result["steps"]
    expect(page.locator("#search-pick")).to_have_text(result["text"])
    screenshot(page, "search")


def test_particle_filtering_draws_particles_their_weights_and_resampling(page):
    """Each streamed particle is a node with its summed weight; a resampling step marks the particles that got no
    copy as pruned and the others with their copy count."""
    connect(page)
    page.click("#tabs button[data-view=search]")
    page.select_option("#search-strategy", "particle-filtering")
    for field, value in (("n", "8"), ("temperature", "1"), ("seed", "5"), ("ess", "1"), ("ptemp", "0.01")):
        page.fill(f"#search-{field}", value)
    page.select_option("#search-select", "weighted")
    with page.expect_response(lambda r: r.url.endswith("/v1/search")) as response:
        page.click("#search-run")
    expect(page.locator("#search-status")).to_have_attribute("data-state", "done")
    steps = [data for kind, data in parse_sse(response.value.body().decode()) if kind == "step"]
    assert steps and all(len(s["beams"]) == len(s["weights"]) == 8 for s in steps)
    assert any(s["ancestors"] is not None for s in steps)  # ess_threshold 1: it resampled
    weight, copies, pruned = {}, {}, set()
    for s in steps:  # the last event that names a particle sets what its node shows
        w = {}
        for c, x in zip(s["beams"], s["weights"]):
            w[c["id"]] = w.get(c["id"], 0.0) + x
        weight.update(w)
        for c in s["beams"]:
            got = [s["beams"][a]["id"] for a in s["ancestors"]] if s["ancestors"] is not None else None
            copies[c["id"]] = None if got is None else got.count(c["id"])
            if got is not None and c["id"] not in got and not c["finished"]:
                pruned.add(c["id"])
            else:
                pruned.discard(c["id"])
    assert page.evaluate("window.__playground.resamplings") == sum(s["ancestors"] is not None for s in steps)
    nodes = page.locator("#search-tree g.node[data-weight]")
    expect(nodes).to_have_count(len(weight))
    for i in range(nodes.count()):
        node = nodes.nth(i)
        pid = int(node.get_attribute("data-id"))
        assert float(node.get_attribute("data-weight")) == pytest.approx(weight[pid], abs=1e-9)
        assert node.get_attribute("data-copies") == (None if copies[pid] is None else str(copies[pid]))
        assert (node.get_attribute("data-state") == "pruned") == (pid in pruned)
    assert pruned or any((c or 0) > 1 for c in copies.values())
    expect(page.locator("#search-tree g.node[data-pick=true]")).to_have_count(1)
    screenshot(page, "particles")


def test_stop_aborts_the_stream_and_the_server_cancels_the_search(page, server):
    gauge = "repirl_searches_in_flight"
    assert wait_for_metric(server, gauge, 0) == 0
    cancelled = read_metric(server, "repirl_searches_total", outcome="cancelled")
    connect(page)
    page.click("#tabs button[data-view=search]")
    # 64 samples at temperature 2: several seconds of noisy sampling, far longer than stopping takes
    page.select_option("#search-strategy", "best-of-n")
    for field, value in (("n", "64"), ("temperature", "2"), ("max-steps", "40"), ("seed", "0")):
        page.fill(f"#search-{field}", value)
    page.click("#search-run")
    expect(page.locator("#search-tree g.node:not(.root)").first).to_be_visible()  # the first step has streamed
    assert wait_for_metric(server, gauge, 1) == 1
    page.click("#search-stop")
    expect(page.locator("#search-status")).to_have_attribute("data-state", "stopped")
    assert wait_for_metric(server, gauge, 0) == 0  # the server ended the search
    assert wait_for_metric(server, "repirl_searches_total", cancelled + 1, outcome="cancelled") == cancelled + 1
    expect(page.locator("#search-counters")).to_have_attribute("data-result-events", "0")
    expect(page.locator("#search-run")).to_be_enabled()
    expect(page.locator("#search-stop")).to_be_disabled()


def test_a_wrong_key_and_a_bad_request_show_the_servers_error(page, server):
    wrong = httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer not-the-key"})
    assert wrong.status_code == 401
    message = wrong.json()["error"]["message"]
    page.fill("#api-key", "not-the-key")
    page.click("#score-run")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text(f"HTTP 401 unauthorized: {message}")
    expect(page.locator("#score-out-a li.step")).to_have_count(0)

    connect(page)
    expect(error).to_be_hidden()
    page.click("#tabs button[data-view=search]")
    page.fill("#search-n", "3")  # beam width 2 does not divide 3: the server's 422, word for word
    bad = httpx.post(server.url + "/v1/search", headers={"Authorization": f"Bearer {API_KEY}"},
                     json={"question": TOY_QUESTION, "strategy": "beam", "n": 3, "beam_width": 2, "stream": True})
    assert bad.status_code == 422
    page.click("#search-run")
    expect(error).to_contain_text(bad.json()["error"]["message"])
    expect(page.locator("#search-status")).to_have_attribute("data-state", "error")
