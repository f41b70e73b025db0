"""Scoring-service benchmarks. Every figure is a ratio of two measurements taken in this same run.

1. /v1/score over HTTP vs the raw engine on the same number of (fresh) items       target >= 0.70
2. 16 candidates sharing a long prefix: warm prefix cache vs cold                   target >= 10x
3. 32 concurrent single-item clients: micro-batched vs one item per engine call     target >= 4x

The service runs under uvicorn in a background thread (real HTTP via httpx) on a tiny random-weight PRM built in
code (or --prm DIR). The engine's own KV reuse is off so that (1) and (3) measure the service and (2) measures the
prefix cache alone. Usage: python load_tests/bench_scoring.py [--engine hf|vllm] [--prm DIR] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


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
        import httpx

        self.thread.start()
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/livez").status_code == 200:
                    return f"http://127.0.0.1:{self.port}"
            except httpx.HTTPError:
                time.sleep(0.05)

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def _app(scorer, redis_url=None, **limits):
    from server.app import create_app
    from server.settings import Limits, Settings

    settings = Settings(prm=[str(scorer.prm_dir)], redis_url=redis_url, limits=Limits(**limits))
    return create_app(settings, scorers={scorer.name: scorer})


def _items(tag: str, n: int, steps: int = 3):
    return [(f"{tag} question {i}: what is {i}+{i * 7}?", [f"step {k}: {i}+{i * 7} = {i * 8} " * 2
                                                          for k in range(steps)]) for i in range(n)]


async def _clients(url: str, payloads: list[dict], concurrency: int) -> float:
    import httpx

    queue = list(payloads)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=concurrency)) as c:
        async def worker():
            while queue:
                r = await c.post("/v1/score", json=queue.pop())
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0


def bench_http_vs_raw(scorer, redis_url, rounds=3, n=128, batch=32, concurrency=4) -> float:
    """Raw: the engine on n fresh items in one call (its best case). HTTP: the same number of fresh items as
    n/batch requests from `concurrency` clients. Rounds alternate so machine load hits both alike."""
    raw_t = http_t = 0.0
    scorer.score(_items("warm-up", 8))
    with ThreadedServer(_app(scorer, redis_url)) as url:
        for r in range(rounds):
            raw_items = _items(f"raw{r}", n)
            t0 = time.perf_counter()
            scorer.score(raw_items)
            raw_t += time.perf_counter() - t0
            http_items = _items(f"http{r}", n)
            payloads = [{"items": [{"question": q, "steps": s} for q, s in http_items[i: i + batch]]}
                        for i in range(0, n, batch)]
            http_t += asyncio.run(_clients(url, payloads, concurrency))
    raw, http = rounds * n / raw_t, rounds * n / http_t
    print(f"[1] raw engine {raw:8.1f} items/s | /v1/score over HTTP {http:8.1f} items/s | "
          f"ratio {http / raw:.2f} (target >= 0.70)")
    return http / raw


def bench_prefix_cache(scorer, redis_url, trials=5, prefix_steps=8, n=16) -> float:
    import httpx

    cold_t, warm_t = [], []
    with ThreadedServer(_app(scorer, redis_url)) as url, httpx.Client(base_url=url, timeout=300) as c:
        for t in range(trials):
            prefix = [f"trial {t} shared step {k}: 12*{k} = {12 * k}" for k in range(prefix_steps)]
            payload = {"items": [{"question": f"long shared prefix {t}", "steps": prefix + [f"candidate {j} ends"]}
                                 for j in range(n)]}
            for bucket in (cold_t, warm_t):
                t0 = time.perf_counter()
                body = c.post("/v1/score", json=payload).json()
                bucket.append(time.perf_counter() - t0)
            assert body["usage"]["cached_steps"] == n * (prefix_steps + 1), body["usage"]
    cold, warm = sum(cold_t) / trials, sum(warm_t) / trials
    print(f"[2] 16 candidates x {prefix_steps + 1} steps: cold {cold * 1000:7.1f} ms | warm {warm * 1000:7.1f} ms | "
          f"speed-up {cold / warm:.1f}x (target >= 10x)")
    return cold / warm


def bench_micro_batching(scorer, redis_url, clients=32, per_client=2, rounds=3) -> float:
    """Two services on the same engine, one forcing one item per engine call; rounds alternate between them."""
    tokens = max(len(scorer.encoder.encode(q, s).ids) for q, s in _items("probe", 4, steps=2))
    configs = {"one-at-a-time": dict(max_tokens=tokens + 32, max_batch_tokens=tokens + 32),  # < two items
               "micro-batched": dict(max_wait_ms=5)}
    apps = {name: _app(scorer, redis_url, **limits) for name, limits in configs.items()}
    elapsed = {name: 0.0 for name in configs}
    with ThreadedServer(apps["one-at-a-time"]) as url_one, ThreadedServer(apps["micro-batched"]) as url_mb:
        urls = {"one-at-a-time": url_one, "micro-batched": url_mb}
        for r in range(rounds):
            for name in configs:
                payloads = [{"question": q, "steps": s} for q, s in _items(f"{name} {r}", clients * per_client, 2)]
                elapsed[name] += asyncio.run(_clients(urls[name], payloads, clients))
    n = rounds * clients * per_client
    rates = {name: n / t for name, t in elapsed.items()}
    mean_batch = {}
    for name, app in apps.items():
        reg = app.state.repirl.metrics.registry
        mean_batch[name] = (reg.get_sample_value("repirl_batch_items_sum", {"model": scorer.name})
                            / reg.get_sample_value("repirl_batch_items_count", {"model": scorer.name}))
    ratio = rates["micro-batched"] / rates["one-at-a-time"]
    print(f"[3] {clients} concurrent single-item clients: one-at-a-time {rates['one-at-a-time']:7.1f} items/s "
          f"(mean batch {mean_batch['one-at-a-time']:.1f}) | micro-batched {rates['micro-batched']:7.1f} items/s "
          f"(mean batch {mean_batch['micro-batched']:.1f}) | speed-up {ratio:.1f}x (target >= 4x)")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--prm", type=Path, default=None)
    ap.add_argument("--redis-url", default=None)
    args = ap.parse_args()
    from repirl.scoring.loader import load_scorer
    from repirl.scoring.tiny_prms import build_tiny_prm

    tmp = tempfile.TemporaryDirectory()
    prm = args.prm or build_tiny_prm(Path(tmp.name) / "prm", "token-reward")
    kwargs = {"kv_cache_tokens": 0} if args.engine == "hf" else {"max_model_len": 512}
    scorer = load_scorer(prm, engine=args.engine, **kwargs)
    print(f"PRM {prm} engine {args.engine} cache {'redis ' + args.redis_url if args.redis_url else 'in-process'}")
    bench_http_vs_raw(scorer, args.redis_url)
    bench_prefix_cache(scorer, args.redis_url)
    bench_micro_batching(scorer, args.redis_url)


if __name__ == "__main__":
    main()
