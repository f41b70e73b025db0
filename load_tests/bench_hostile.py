"""Latency figures for issue 22, items 5 and 7 (the tests assert behaviour, not timings; this prints the ratios).

    python load_tests/bench_hostile.py [--part abandoned|fairness|textflood|both]

abandoned: a normal best-of-n (n=4, 2 steps of 8 tokens) unloaded, then right after 50 clients abandoned long
  best-of-n requests (n=8, one step of up to 1000 tokens) once all 50 were admitted: median and worst of 5, and
  the ratio to unloaded (issue target: <= 2x).
fairness: a light key's single-item /v1/score latency alone, then while a heavy key's 12 clients (in a process of
  their own) saturate the PRM queue with 1-64 items of ~360 tokens (retrying at once after a 429): p50/p99 and the
  p99 ratio (issue target: <= 3x), the light key's statuses, the heavy key's 200/429 counts, and the heavy key's
  throughput (items and computed tokens answered per second) alone and while the light key runs. One server per
  `--fair-quantum-ms` value (0: no time quantum, the batcher before it), one after the other on the same machine.
textflood: a small /v1/score's latency alone, then while `--flood-clients` clients (no API keys: one caller) send
  the /pooling body that costs the most tokenizing before its 413, over and over (64 texts each just short of what
  could fit: tests/server/test_hostile_parsing.py `costliest_pooling_body`; until 2026-12-07 it was one text as long
  as the 1 MB limit allows, about a second of tokenizing, now refused on its length): p50/p99 and the ratio
  (server/text_work.py; before it the small request queued behind the flood's tokenizing: p50 11.0 s with 24).
refusals: how long the service takes to refuse the largest /pooling text the 1 MB limit allows (refused on its
  length, repirl/token_bounds.py), against tokenizing that text here with the PRM's tokenizer (what the service did
  before it refused it), and the costliest body above; median of `--light-requests` each.

The service runs as in the tests (`python -m server`, transformers engines, tiny random models, torch_threads 1),
on this machine's shared CPU: figures move with its load; both sides of each ratio come from the same run."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from repirl.scoring.tiny_prms import build_policy, build_tiny_prm  # noqa: E402
from tests.server.conftest import ServerProc, metric, poll  # noqa: E402
from tests.server.test_abandoned_work import ABANDONED, LONG, NORMAL  # noqa: E402
from tests.server.test_cancellation import Victim  # noqa: E402
from tests.server.test_fairness import HEAVY, HEAVY_CLIENTS, LIGHT, items  # noqa: E402
from tests.server.test_hostile_parsing import _fill, costliest_pooling_body  # noqa: E402


def _timed(c: httpx.Client, path: str, body: dict) -> float:
    t = time.perf_counter()
    r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    return time.perf_counter() - t


def abandoned(root: Path) -> None:
    prm = build_tiny_prm(root / "prm4k", "token-reward", max_position_embeddings=4096)
    policy = build_policy(root / "policy4k", max_position_embeddings=4096)
    srv = ServerProc(["--prm", f"tr={prm}", "--policy", f"hf:{policy}"],
                     env={"REPIRL_ENGINE": "hf", "REPIRL_TORCH_THREADS": "1"}, log=root / "abandoned.log").wait_ready()
    try:
        with httpx.Client(base_url=srv.url, timeout=600) as c:
            for _ in range(3):
                _timed(c, "/v1/best-of-n", NORMAL)
            alone = [_timed(c, "/v1/best-of-n", {**NORMAL, "seed": k}) for k in range(5)]
            victims = [Victim(srv.url, path="/v1/best-of-n", body={**LONG, "seed": k}) for k in range(ABANDONED)]
            assert poll(lambda: metric(c, "repirl_searches_in_flight") >= ABANDONED, timeout=300)
            for v in victims:
                v.leave()
            after = [_timed(c, "/v1/best-of-n", {**NORMAL, "seed": 100 + k}) for k in range(5)]
            stopped = metric(c, "repirl_cancelled_work_total", stage="engine")
        med_a, med_b = statistics.median(alone), statistics.median(after)
        print(f"[abandoned] normal best-of-n unloaded: median {med_a * 1000:.0f} ms, worst {max(alone) * 1000:.0f} ms")
        print(f"[abandoned] right after {ABANDONED} abandoned: median {med_b * 1000:.0f} ms, worst "
              f"{max(after) * 1000:.0f} ms (first {after[0] * 1000:.0f} ms); ratio median {med_b / med_a:.2f}x, "
              f"worst/unloaded-worst {max(after) / max(alone):.2f}x; policy samples stopped: {stopped:.0f}")
    finally:
        srv.stop()


def _p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def _light(c: httpx.AsyncClient, n: int, tag: str) -> tuple[list[float], list[int]]:
    lat, statuses = [], []
    for k in range(n):
        t = time.perf_counter()
        r = await c.post("/v1/score", json={"items": items(f"{tag}-{k}", 1)})
        lat.append(time.perf_counter() - t)
        statuses.append(r.status_code)
    return lat, statuses


async def _heavy_load(url: str, stop, counts) -> None:
    """The heavy key: HEAVY_CLIENTS clients sending 1-64 items at once, retrying at once after a 429, until `stop`.
    `counts`: [items answered 200, tokens computed for them, 200s, 429s, other statuses] (shared with the parent)."""
    import random

    async def client(c: httpx.AsyncClient, w: int):
        rng, k = random.Random(w), 0
        while not stop.is_set():
            r = await c.post("/v1/score", json={"items": items(f"heavy-{w}-{k}", rng.randint(1, 64))})
            with counts.get_lock():
                if r.status_code == 200:
                    usage = r.json()["usage"]
                    counts[0] += usage["items"]
                    counts[1] += usage["tokens_computed"]
                    counts[2] += 1
                else:
                    counts[3 if r.status_code == 429 else 4] += 1
            k += 1

    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=HEAVY_CLIENTS),
                                 headers={"Authorization": f"Bearer {HEAVY}"}) as c:
        await asyncio.gather(*(client(c, w) for w in range(HEAVY_CLIENTS)))


def _heavy_process(url: str, stop, counts) -> None:
    asyncio.run(_heavy_load(url, stop, counts))


async def _fair(url: str, n: int, heavy_s: float, window_s: float) -> None:
    """The heavy key's clients run in a process of their own, as another tenant's would: in one event loop with the
    light key's client, the light latency also counted the client's own turns handling the heavy answers."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    stop, counts = ctx.Event(), ctx.Array("d", 5)

    def snapshot() -> list[float]:
        with counts.get_lock():
            return list(counts)

    async def heavy_rate(window: Awaitable) -> tuple[object, str]:
        t, before = time.perf_counter(), snapshot()
        out = await window
        s, after = time.perf_counter() - t, snapshot()
        return out, (f"{(after[0] - before[0]) / s:.1f} items/s, "
                     f"{(after[1] - before[1]) / s:.0f} tokens/s over {s:.1f} s")

    async with httpx.AsyncClient(base_url=url, timeout=600, headers={"Authorization": f"Bearer {LIGHT}"}) as lc:
        await _light(lc, 5, "warm")
        alone, _ = await _light(lc, n, "alone")
        heavy = ctx.Process(target=_heavy_process, args=(url, stop, counts), daemon=True)
        heavy.start()
        try:
            while not snapshot()[3]:  # saturated: the heavy key got a 429
                await asyncio.sleep(0.05)
            await asyncio.sleep(window_s)  # the light key is no longer active: the heavy key is alone
            _, heavy_alone = await heavy_rate(asyncio.sleep(heavy_s))
            (loaded, statuses), heavy_loaded = await heavy_rate(_light(lc, n, "loaded"))
        finally:
            stop.set()
            heavy.join(timeout=60)
    ok, refused, other = (int(x) for x in snapshot()[2:])
    ms = lambda x: f"{x * 1000:.0f} ms"  # noqa: E731
    print(f"[fairness] light key alone: p50 {ms(_p(alone, 0.5))}, p99 {ms(_p(alone, 0.99))} ({n} requests)")
    print(f"[fairness] light key while the heavy key saturates: p50 {ms(_p(loaded, 0.5))}, p99 {ms(_p(loaded, 0.99))}; "
          f"p99 ratio {_p(loaded, 0.99) / _p(alone, 0.99):.2f}x; light statuses "
          f"{ {s: statuses.count(s) for s in set(statuses)} }; heavy 200: {ok}, 429: {refused}, other: {other}")
    print(f"[fairness] light key under load, first request {ms(loaded[0])}, slowest three "
          f"{', '.join(ms(x) for x in sorted(loaded)[-3:])}")
    print(f"[fairness] heavy key throughput alone: {heavy_alone}; while the light key runs: {heavy_loaded}")


def fairness(root: Path, n: int, max_batch_tokens: int, quantum_ms: float, heavy_s: float) -> None:
    window_s = 3.0
    (root / "keys.txt").write_text(f"{HEAVY}\n{LIGHT}\n")
    (root / "config.yaml").write_text("engine: hf\ntorch_threads: 1\nlimits:\n  max_items: 64\n  max_tokens: 400\n"
                                      "  max_chars: 300\n  max_queue_items: 256\n"
                                      f"  max_batch_tokens: {max_batch_tokens}\n  fair_quantum_ms: {quantum_ms}\n"
                                      f"  fair_window_s: {window_s}\n")
    prm = root / "prm"
    if not prm.exists():
        build_tiny_prm(prm, "token-reward")
    srv = ServerProc(["--config", str(root / "config.yaml"), "--api-key-file", str(root / "keys.txt"),
                      "--prm", f"tr={prm}"], log=root / "fairness.log").wait_ready()
    try:
        print(f"[fairness] max_batch_tokens {max_batch_tokens}, fair_quantum_ms {quantum_ms:g}"
              + (" (off: the figures before the quantum)" if not quantum_ms else ""))
        asyncio.run(_fair(srv.url, n, heavy_s, window_s))
    finally:
        srv.stop()


def textflood(root: Path, n: int, clients: int) -> None:
    import json
    import threading

    prm = root / "prm"
    if not prm.exists():
        build_tiny_prm(prm, "token-reward")
    srv = ServerProc(["--engine", "hf", "--prm", f"tr={prm}"], log=root / "textflood.log").wait_ready()
    body = costliest_pooling_body(srv.url)
    small = {"question": "What is 2+3?", "steps": ["2+3 = 5", "Answer: 5"]}
    stop, flooded = threading.Event(), []

    def flood():
        with httpx.Client(base_url=srv.url, timeout=600) as c:
            while not stop.is_set():
                flooded.append(c.post("/pooling", json=body).status_code)

    try:
        with httpx.Client(base_url=srv.url, timeout=600) as c:
            alone = [_timed(c, "/v1/score", {**small, "question": f"What is 2+{k}?"}) for k in range(n)]
            threads = [threading.Thread(target=flood, daemon=True) for _ in range(clients)]
            for t in threads:
                t.start()
            assert poll(lambda: metric(c, "repirl_text_work_queued_bytes") > 0, timeout=120)
            during = [_timed(c, "/v1/score", {**small, "question": f"What is 3+{k}?"}) for k in range(n)]
            stop.set()
            for t in threads:
                t.join(600)
        a50, a99, d50, d99 = _p(alone, 0.5), _p(alone, 0.99), _p(during, 0.5), _p(during, 0.99)
        print(f"[textflood] small /v1/score alone: p50 {a50 * 1000:.0f} ms, p99 {a99 * 1000:.0f} ms")
        print(f"[textflood] while {clients} clients send {len(json.dumps(body)) / 1e6:.2f} MB /pooling inputs: p50 "
              f"{d50 * 1000:.0f} ms, p99 {d99 * 1000:.0f} ms; ratio p50 {d50 / a50:.1f}x, p99 {d99 / a99:.1f}x; "
              f"flood answered {len(flooded)} ({', '.join(f'{k}: {flooded.count(k)}' for k in sorted(set(flooded)))})")
    finally:
        srv.stop()


def refusals(root: Path, n: int) -> None:
    from transformers import AutoTokenizer

    prm = root / "prm"
    if not prm.exists():
        build_tiny_prm(prm, "token-reward")
    srv = ServerProc(["--engine", "hf", "--prm", f"tr={prm}"], log=root / "refusals.log").wait_ready()
    largest = _fill(lambda s: {"model": "tr", "input": s}, "12 + 3 = 15\n\n")  # the largest under the 1 MB limit
    try:
        with httpx.Client(base_url=srv.url, timeout=600) as c:
            costliest = costliest_pooling_body(srv.url)
            timed = {}
            for name, body in (("largest text", largest), ("costliest list", costliest)):
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    r = c.post("/pooling", json=body)
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 413, r.text
                timed[name] = statistics.median(times)
        tok = AutoTokenizer.from_pretrained(prm)
        tokenize = []
        for _ in range(max(3, n // 10)):
            t0 = time.perf_counter()
            tok.encode(largest["input"])
            tokenize.append(time.perf_counter() - t0)
        before = statistics.median(tokenize)
        size = len(largest["input"].encode()) / 1e6
        print(f"[refusals] a {size:.2f} MB /pooling text: 413 in {timed['largest text'] * 1000:.0f} ms over HTTP; "
              f"tokenizing it here (the service's cost before its 413, before repirl/token_bounds.py): "
              f"{before * 1000:.0f} ms ({before / timed['largest text']:.0f}x the refusal)")
        print(f"[refusals] 64 texts just short of the bound ({len(costliest['input'][0])} characters each): 413 in "
              f"{timed['costliest list'] * 1000:.0f} ms (every text tokenized first)")
    finally:
        srv.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["abandoned", "fairness", "textflood", "refusals", "both"], default="both",
                    help="both: abandoned and fairness (textflood and refusals run alone)")
    ap.add_argument("--flood-clients", type=int, default=24)
    ap.add_argument("--light-requests", type=int, default=50)
    # a light request waits for the engine call in flight: its size bounds the light key's latency under load
    ap.add_argument("--max-batch-tokens", type=int, default=16384)
    # 0 is the batcher without a time quantum (before), each value a server of its own, one after the other
    ap.add_argument("--fair-quantum-ms", type=float, nargs="+", default=[0, 25])
    ap.add_argument("--heavy-seconds", type=float, default=10, help="the heavy key's throughput window, alone")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if args.part in ("abandoned", "both"):
            abandoned(Path(d))
        if args.part in ("fairness", "both"):
            for quantum_ms in args.fair_quantum_ms:
                fairness(Path(d), args.light_requests, args.max_batch_tokens, quantum_ms, args.heavy_seconds)
        if args.part == "textflood":
            textflood(Path(d), args.light_requests, args.flood_clients)
        if args.part == "refusals":
            refusals(Path(d), args.light_requests)


if __name__ == "__main__":
    main()
