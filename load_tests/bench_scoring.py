"""Scoring-service benchmarks. Every figure is a ratio of two measurements taken in this same run.

1. /v1/score over HTTP vs the raw engine on the same number of (fresh) items           target >= 0.70
2. 16 candidates sharing a ~1500-token prefix: warm prefix cache vs cold              target >= 10x
3. 32 concurrent single-item clients: micro-batched vs one item per engine call        target >= 4x
   (plus, measured directly, the most batching can give here: engine time per item alone vs in a batch of 32,
   and the per-request HTTP cost that batching cannot remove)

The service runs under uvicorn in a background thread on a tiny random-weight PRM built in code (or --prm DIR),
max_position_embeddings 4096. Clients use a minimal keep-alive HTTP/1.1 client on asyncio streams: the client shares
the CPU with the server, and httpx's connection pool cost ~2x the server's own per-request CPU in a py-spy profile.
The HF engine's KV reuse is off except in 2b, so (1) and (3) measure the service and (2a) the prefix cache alone.
Usage: python load_tests/bench_scoring.py [--engine hf|vllm] [--prm DIR] [--redis-url URL] [--torch-threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from bench_results import emit  # noqa: E402 - load_tests/ is the script's directory

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MAX_LEN = 4096
_ENGINE = "hf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self.port

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


class RawHTTP:
    """One keep-alive HTTP/1.1 connection on asyncio streams (JSON POST, Content-Length replies as uvicorn sends)."""

    def __init__(self, port: int):
        self.port = port

    async def __aenter__(self):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc):
        self.writer.close()

    async def post(self, path: str, payload: dict) -> dict:
        body = json.dumps(payload).encode()
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await self.writer.drain()
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        length = next(int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:"))
        data = await self.reader.readexactly(length)
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data)


def _app(scorer, redis_url=None, **limits):
    from server.app import create_app
    from server.settings import Limits, Settings

    settings = Settings(prm=[str(scorer.prm_dir)], redis_url=redis_url, limits=Limits(max_tokens=MAX_LEN, **limits))
    return create_app(settings, scorers={scorer.name: scorer})


def _items(tag: str, n: int, steps: int = 3):
    return [(f"{tag} question {i}: what is {i}+{i * 7}?", [f"step {k}: {i}+{i * 7} = {i * 8} " * 2
                                                          for k in range(steps)]) for i in range(n)]


async def _clients(port: int, payloads: list[dict], concurrency: int) -> float:
    """`concurrency` clients, one connection each, sending the payloads as fast as answered; seconds for all."""
    queue = list(payloads)

    async def worker():
        async with RawHTTP(port) as c:
            while queue:
                await c.post("/v1/score", queue.pop())

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


def _engine_seconds(scorer, items) -> float:
    t0 = time.perf_counter()
    scorer.score(items)
    return time.perf_counter() - t0


def bench_http_vs_raw(scorer, redis_url, rounds=3, n=128, batch=32, concurrency=4) -> float:
    """Raw: the engine on n fresh items in one call (its best case). HTTP: the same number of fresh items as
    n/batch requests from `concurrency` clients. Rounds alternate so machine load hits both alike."""
    raw_t = http_t = 0.0
    scorer.score(_items("warm-up", 8))
    with ThreadedServer(_app(scorer, redis_url)) as port:
        for r in range(rounds):
            raw_t += _engine_seconds(scorer, _items(f"raw{r}", n))
            http_items = _items(f"http{r}", n)
            payloads = [{"items": [{"question": q, "steps": s} for q, s in http_items[i: i + batch]]}
                        for i in range(0, n, batch)]
            http_t += asyncio.run(_clients(port, payloads, concurrency))
    raw, http = rounds * n / raw_t, rounds * n / http_t
    print(f"[1] raw engine {raw:8.1f} items/s | /v1/score over HTTP {http:8.1f} items/s | "
          f"ratio {http / raw:.2f} (target >= 0.70)", flush=True)
    emit(f"scoring [1] ({_ENGINE})", "/v1/score over HTTP vs the raw engine, same fresh items (items/s)", http / raw,
         f"{http:.0f} vs {raw:.0f} items/s", ">= 0.70")
    return http / raw


def _long_prefix(trial: int, tokens: int = 1500, steps: int = 8) -> list[str]:
    """`steps` steps of ~tokens/steps characters (the tiny tokenizer is byte-level: one token per character)."""
    per = tokens // steps
    return [(f"trial {trial} shared step {k}: 12*{k} = {12 * k}; " * 40)[:per] for k in range(steps)]


def bench_prefix_cache(scorer, redis_url, trials=3, n=16, kv_scorer=None) -> float:
    """2a: the same 16 candidates again (every step in the service's prefix cache) vs first time (cache cold).
    2b (transformers engine only, KV reuse on): the same cold request, where items of one call share the prefix's
    computation, then 16 *new* final steps on that prefix (resumed from its KV; the step cache misses them)."""
    async def post(port, payload):
        async with RawHTTP(port) as c:
            t0 = time.perf_counter()
            body = await c.post("/v1/score", payload)
            return time.perf_counter() - t0, body

    def payload(t, final):
        prefix = _long_prefix(t)
        return {"items": [{"question": f"long shared prefix {t}", "steps": prefix + [f"candidate {j} {final}"]}
                          for j in range(n)]}

    cold_t, warm_t = [], []
    tokens = len(scorer.encoder.encode("long shared prefix 0", _long_prefix(0) + ["candidate 0 ends"]).ids)
    with ThreadedServer(_app(scorer, redis_url)) as port:
        for t in range(trials):
            for bucket in (cold_t, warm_t):
                dt, body = asyncio.run(post(port, payload(t, "ends")))
                bucket.append(dt)
            assert body["usage"]["cached_steps"] == n * 9, body["usage"]
    cold, warm = sum(cold_t) / trials, sum(warm_t) / trials
    print(f"[2a] 16 candidates x 9 steps, {tokens} tokens each: cold {cold * 1000:7.1f} ms | warm (same request "
          f"again) {warm * 1000:6.1f} ms | speed-up {cold / warm:.1f}x (target >= 10x)", flush=True)
    emit(f"scoring [2a] ({_ENGINE})", f"warm vs cold prefix cache: 16 candidates sharing a prefix, {tokens} tokens "
         "each, same request again", cold / warm, f"{warm * 1000:.1f} vs {cold * 1000:.0f} ms", ">= 10x")
    if kv_scorer is not None:
        first_t, next_t = [], []
        with ThreadedServer(_app(kv_scorer, redis_url)) as port:
            for t in range(trials):
                dt, _ = asyncio.run(post(port, payload(100 + t, "first")))
                first_t.append(dt)
                dt, body = asyncio.run(post(port, payload(100 + t, "second try")))
                next_t.append(dt)
                assert body["usage"]["tokens_computed"] < n * 40, body["usage"]
        first, nxt = sum(first_t) / trials, sum(next_t) / trials
        print(f"[2b] hf engine KV reuse on (vs cold above, KV off): first request {first * 1000:7.1f} ms "
              f"({cold / first:.1f}x: the shared prefix is computed once per call) | 16 new final steps on the "
              f"scored prefix {nxt * 1000:6.1f} ms ({cold / nxt:.1f}x)", flush=True)
        emit(f"scoring [2b] ({_ENGINE})", "engine KV reuse on vs off: first (cold) request of [2a]", cold / first,
             f"{first * 1000:.0f} vs {cold * 1000:.0f} ms")
    return cold / warm


def bench_micro_batching(scorer, redis_url, clients=32, per_client=4, rounds=3) -> float:
    """The same service twice, max_batch_items=1 (one item per engine call) vs the default; rounds alternate."""
    configs = {"one-at-a-time": dict(max_batch_items=1), "micro-batched": dict(max_wait_ms=5)}
    apps = {name: _app(scorer, redis_url, **limits) for name, limits in configs.items()}
    elapsed = {name: 0.0 for name in configs}
    # the ceiling: engine time per item alone vs in one batch of `clients` items (no HTTP), measured directly
    solo = batched = 0.0
    for r in range(rounds):
        solo += sum(_engine_seconds(scorer, [it]) for it in _items(f"solo{r}", clients, 2))
        batched += _engine_seconds(scorer, _items(f"batch{r}", clients, 2))
    solo_ms, batched_ms = 1000 * solo / (rounds * clients), 1000 * batched / (rounds * clients)
    with ThreadedServer(apps["one-at-a-time"]) as port_one, ThreadedServer(apps["micro-batched"]) as port_mb:
        ports = {"one-at-a-time": port_one, "micro-batched": port_mb}
        item = _items("cached", 1, 2)[0]
        cached = [{"question": item[0], "steps": item[1]}] * (clients * per_client)
        asyncio.run(_clients(port_mb, cached[:1], 1))
        http_ms = 1000 * asyncio.run(_clients(port_mb, cached, clients)) / len(cached)
        for r in range(rounds):
            for name in configs:
                payloads = [{"question": q, "steps": s} for q, s in _items(f"{name} {r}", clients * per_client, 2)]
                elapsed[name] += asyncio.run(_clients(ports[name], payloads, clients))
    n = rounds * clients * per_client
    rates = {name: n / t for name, t in elapsed.items()}
    mean_batch = {}
    for name, app in apps.items():
        reg = app.state.repirl.metrics.registry
        mean_batch[name] = (reg.get_sample_value("repirl_batch_items_sum", {"model": scorer.name})
                            / reg.get_sample_value("repirl_batch_items_count", {"model": scorer.name}))
    ratio = rates["micro-batched"] / rates["one-at-a-time"]
    print(f"[3] engine alone: {solo_ms:.2f} ms/item one at a time, {batched_ms:.2f} ms/item in batches of {clients} "
          f"-> engine ceiling {solo_ms / batched_ms:.2f}x | HTTP+service cost of a cached single-item request "
          f"{http_ms:.2f} ms -> bound with one CPU-bound pipeline (h+e1)/(h+eB) = "
          f"{(http_ms + solo_ms) / (http_ms + batched_ms):.2f}x", flush=True)
    print(f"[3] {clients} concurrent single-item clients: one-at-a-time {rates['one-at-a-time']:7.1f} items/s "
          f"(mean batch {mean_batch['one-at-a-time']:.1f}) | micro-batched {rates['micro-batched']:7.1f} items/s "
          f"(mean batch {mean_batch['micro-batched']:.1f}) | speed-up {ratio:.2f}x (target >= 4x)", flush=True)
    emit(f"scoring [3] ({_ENGINE})", f"micro-batched vs one item per engine call, {clients} concurrent single-item "
         "clients (items/s)", ratio, f"{rates['micro-batched']:.0f} vs {rates['one-at-a-time']:.0f} items/s; "
         f"engine ceiling {solo_ms / batched_ms:.2f}x", ">= 4x")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--prm", type=Path, default=None)
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="transformers intra-op threads (1: on a loaded 2-core machine 2 threads ran ~3x slower)")
    ap.add_argument("--only", default="123", help="which benchmarks to run, e.g. 23")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (trials) per measurement")
    args = ap.parse_args()
    global _ENGINE
    _ENGINE = args.engine
    import torch

    from repirl.scoring.loader import load_scorer
    from repirl.scoring.tiny_prms import build_tiny_prm

    torch.set_num_threads(args.torch_threads)
    tmp = tempfile.TemporaryDirectory()
    prm = args.prm or build_tiny_prm(Path(tmp.name) / "prm", "token-reward", max_position_embeddings=MAX_LEN)
    kwargs = {"kv_cache_tokens": 0} if args.engine == "hf" else {"max_model_len": MAX_LEN}
    scorer = load_scorer(prm, engine=args.engine, **kwargs)
    kv_scorer = load_scorer(prm, engine="hf", name="prm-kv") if args.engine == "hf" and "2" in args.only else None
    print(f"PRM {prm} engine {args.engine} torch threads {torch.get_num_threads()} cache "
          f"{'redis ' + args.redis_url if args.redis_url else 'in-process'} cpus {os.cpu_count()} "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    if "1" in args.only:
        bench_http_vs_raw(scorer, args.redis_url, rounds=args.rounds)
    if "2" in args.only:
        bench_prefix_cache(scorer, args.redis_url, trials=args.rounds, kv_scorer=kv_scorer)
    if "3" in args.only:
        bench_micro_batching(scorer, args.redis_url, rounds=args.rounds)


if __name__ == "__main__":
    main()
