"""`make soak`: a long locust run of the mixed profile with hostile clients interleaved (load_tests/hostile.py: the
quadratic OpenRLHF prompt, huge numbers, 20k-digit steps, stalled streams), against the service with the demo
models (tiny ones without runs/demo) and a real redis-server capped like the Helm chart's (maxmemory, LRU).

While it runs, the service process (and its children) is sampled every few seconds (RSS, threads, open file
descriptors; psutil) with Redis's used_memory, and /livez is polled every half second (its worst latency shows a
frozen event loop). At the end: requests, failures, p50/p99 per endpoint, the samples at start, after warm-up and at
the end, and the checks below. Exit status 1 when a check fails, so a regression fails the command:
- no failed request but 429s with Retry-After (hostile requests: refused with a 4xx, or served);
- p99 of every normal endpoint <= --max-p99-ms; /livez never slower than --max-livez-ms;
- from warm-up (the first --warmup-s) to the end: RSS grows <= --max-rss-growth-mb, threads <= --max-thread-growth,
  open files <= --max-fd-growth; Redis used_memory <= its maxmemory;
- after the load, the service goes back to idle: no search in flight, nothing queued, within 60 s.

Usage: python load_tests/soak.py [--seconds 600] [--users 24] [--hostile 2] [--stall-s 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from load_tests.run_load import _wait, read_stats, run_locust, scrape, start_redis, start_service  # noqa: E402

LOCUSTFILES = f"{REPO / 'load_tests' / 'locustfile.py'},{REPO / 'load_tests' / 'hostile.py'}"


@dataclass
class Sample:
    t: float
    rss_mb: float
    threads: int
    fds: int
    redis_mb: float | None


@dataclass
class Monitor:
    """Samples the service's process tree and Redis every `every_s`; polls /livez every `livez_every_s`."""

    pid: int
    url: str
    redis_port: int | None
    every_s: float = 5.0
    livez_every_s: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    livez_ms: list[float] = field(default_factory=list)
    livez_failures: int = 0

    def __post_init__(self):
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._threads = [threading.Thread(target=self._sample_loop, daemon=True),
                         threading.Thread(target=self._livez_loop, daemon=True)]

    def start(self) -> "Monitor":
        self.sample()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        self.sample()

    def sample(self) -> Sample:
        import psutil

        procs = [psutil.Process(self.pid)]
        procs += procs[0].children(recursive=True)
        rss = threads = fds = 0
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    threads += p.num_threads()
                    fds += p.num_fds()
            except psutil.NoSuchProcess:
                pass
        s = Sample(time.monotonic() - self._t0, rss / 2**20, threads, fds, self._redis_mb())
        self.samples.append(s)
        return s

    def _redis_mb(self) -> float | None:
        if self.redis_port is None:
            return None
        import redis

        try:
            return redis.Redis(port=self.redis_port, socket_timeout=5).info("memory")["used_memory"] / 2**20
        except redis.RedisError:
            return None

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def _livez_loop(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.wait(self.livez_every_s):
                t0 = time.perf_counter()
                try:
                    ok = c.get("/livez").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.livez_ms.append((time.perf_counter() - t0) * 1000)
                self.livez_failures += not ok

    def at(self, t: float) -> Sample:
        """The first sample at or after `t` seconds (the last one if none)."""
        return next((s for s in self.samples if s.t >= t), self.samples[-1])


def allowed_failure(error: str) -> bool:
    """Only 429s that carried Retry-After (load_tests/locustfile.py writes them so)."""
    return "429 Retry-After=" in error and "Retry-After=None" not in error


def read_failures(csv_prefix: Path) -> list[dict]:
    path = Path(f"{csv_prefix}_failures.csv")
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def wait_idle(url: str, timeout_s: float = 60) -> dict:
    """The service's in-flight gauges once they read zero (or at the deadline)."""
    names = ("repirl_searches_in_flight", "repirl_queue_items", "repirl_requests_in_flight")
    deadline, now = time.monotonic() + timeout_s, {}
    while True:
        m = scrape(url)
        now = {n: sum(v for (name, _), v in m.items() if name == n) for n in names}
        # the scrape itself is one request in flight
        if (now["repirl_searches_in_flight"] == 0 and now["repirl_queue_items"] == 0
                and now["repirl_requests_in_flight"] <= 1) or time.monotonic() > deadline:
            return now
        time.sleep(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--users", type=int, default=24, help="MixedUser count (the edge of saturation on 2 cores)")
    ap.add_argument("--hostile", type=int, default=2, help="HostileUser count")
    ap.add_argument("--spawn-rate", type=float, default=8)
    ap.add_argument("--stall-s", type=float, default=30, help="how long a stalled stream holds its socket")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm", "auto"])
    ap.add_argument("--policy-engine", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--redis-maxmemory", default="64mb")
    ap.add_argument("--warmup-s", type=float, default=60, help="growth is measured from here to the end")
    ap.add_argument("--max-p99-ms", type=float, default=30_000)
    ap.add_argument("--max-livez-ms", type=float, default=2_000)
    ap.add_argument("--max-rss-growth-mb", type=float, default=200)
    ap.add_argument("--max-thread-growth", type=int, default=16)
    ap.add_argument("--max-fd-growth", type=int, default=64)
    ap.add_argument("--out", type=Path, default=REPO / "load_tests" / "reports")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="repirl-soak-"))
    redis_proc = server = None
    try:
        redis_proc, redis_url = start_redis(work, "--maxmemory", args.redis_maxmemory, "--maxmemory-policy",
                                            "allkeys-lru")
        env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        server, url, service = start_service(work, args.engine, args.policy_engine, redis_url, env)
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0]) if redis_url else None
        import httpx

        _wait(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 60, "the service", server)
        locust_env = {**env, "REPIRL_SOAK_HOSTILE": str(args.hostile),
                      "REPIRL_SOAK_STALL_S": str(args.stall_s)}
        before = scrape(url)
        monitor = Monitor(server.pid, url, redis_port).start()
        csv_prefix = work / "soak"
        print(f"soak: {args.users} MixedUser + {args.hostile} HostileUser for {args.seconds} s against {url}",
              flush=True)
        rc = run_locust(url, args.seconds, args.users + args.hostile, args.spawn_rate, ["MixedUser", "HostileUser"],
                        csv_prefix, env=locust_env, locustfiles=LOCUSTFILES)
        idle = wait_idle(url)
        monitor.stop()
        after = scrape(url)
        report, ok = write_report(args, csv_prefix, monitor, idle, before, after, rc, service)
        print(report)
        return 0 if ok else 1
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(60)
            except Exception:  # noqa: BLE001 - still running: kill it
                server.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def write_report(args, csv_prefix: Path, monitor: Monitor, idle: dict, before: dict, after: dict, locust_rc: int,
                 service: str) -> tuple[str, bool]:
    stats = read_stats(csv_prefix)
    failures = read_failures(csv_prefix)
    bad = [f for f in failures if not allowed_failure(f["Error"])]
    allowed_429 = sum(int(f["Occurrences"]) for f in failures if allowed_failure(f["Error"]))
    start, warm, end = monitor.samples[0], monitor.at(args.warmup_s), monitor.samples[-1]
    redis_cap = _mb(args.redis_maxmemory)
    checks = []

    def check(ok: bool, what: str) -> None:
        checks.append((ok, what))

    check(not bad, f"failures other than 429 + Retry-After: {sum(int(f['Occurrences']) for f in bad)}")
    for r in stats:
        if r["Name"] != "Aggregated" and not r["Name"].startswith("hostile") and r["99%"] not in ("N/A", ""):
            check(float(r["99%"]) <= args.max_p99_ms, f"p99 of {r['Name']}: {r['99%']} ms (<= {args.max_p99_ms:.0f})")
    worst_livez = max(monitor.livez_ms, default=0.0)
    check(worst_livez <= args.max_livez_ms and monitor.livez_failures == 0,
          f"/livez worst {worst_livez:.0f} ms (<= {args.max_livez_ms:.0f}), {monitor.livez_failures} failed")
    check(end.rss_mb - warm.rss_mb <= args.max_rss_growth_mb,
          f"RSS {warm.rss_mb:.0f} -> {end.rss_mb:.0f} MB after warm-up (growth <= {args.max_rss_growth_mb:.0f})")
    check(end.threads - warm.threads <= args.max_thread_growth,
          f"threads {warm.threads} -> {end.threads} (growth <= {args.max_thread_growth})")
    check(end.fds - warm.fds <= args.max_fd_growth, f"open files {warm.fds} -> {end.fds} (growth <= "
          f"{args.max_fd_growth})")
    redis_peak = max((s.redis_mb for s in monitor.samples if s.redis_mb is not None), default=None)
    if redis_peak is not None:
        check(redis_peak <= redis_cap, f"Redis used_memory peak {redis_peak:.1f} MB (<= maxmemory {redis_cap:.0f})")
    check(idle["repirl_searches_in_flight"] == 0 and idle["repirl_queue_items"] == 0,
          f"idle after the load: searches in flight {idle['repirl_searches_in_flight']:.0f}, queued items "
          f"{idle['repirl_queue_items']:.0f}")
    ok = all(c for c, _ in checks)

    statuses = {}
    for (n, ls), v in after.items():
        if n == "repirl_requests_total":
            d = dict(ls)
            statuses[d["status"]] = statuses.get(d["status"], 0) + v - before.get((n, ls), 0)
    lines = [f"# Soak report ({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')})", "",
             f"`make soak` (load_tests/soak.py): {args.users} MixedUser + {args.hostile} HostileUser for "
             f"{args.seconds} s; stalled streams held {args.stall_s:.0f} s. Service: {service}; Redis maxmemory "
             f"{args.redis_maxmemory} (allkeys-lru). Machine: {os.cpu_count()} CPUs.", "",
             "| endpoint | requests | failures | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    for r in stats:
        name = "**all**" if r["Name"] == "Aggregated" else f"`{r['Name']}`"
        lines.append(f"| {name} | {r['Request Count']} | {r['Failure Count']} | {r['50%']} | {r['99%']} | "
                     f"{float(r['Max Response Time']):.0f} |")
    livez = sorted(monitor.livez_ms) or [0.0]
    lines += ["", f"- failures: {allowed_429} x 429 with Retry-After (allowed), "
              f"{sum(int(f['Occurrences']) for f in bad)} other",
              f"- HTTP statuses (service): " + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(statuses.items()) if v),
              f"- /livez polled {len(monitor.livez_ms)} times: median {statistics.median(livez):.1f} ms, worst "
              f"{livez[-1]:.0f} ms",
              "", "| sample | t s | RSS MB | threads | open files | Redis used MB |", "|---|---:|---:|---:|---:|---:|"]
    for label, s in (("start", start), ("after warm-up", warm), ("end", end)):
        lines.append(f"| {label} | {s.t:.0f} | {s.rss_mb:.0f} | {s.threads} | {s.fds} | "
                     f"{'-' if s.redis_mb is None else f'{s.redis_mb:.1f}'} |")
    lines += ["", "## Checks", ""] + [f"- {'PASS' if c else 'FAIL'}: {w}" for c, w in checks]
    if bad:
        lines += ["", "## Failures not allowed", ""] + [f"- {f['Name']}: {f['Error'][:300]} (x{f['Occurrences']})"
                                                      for f in bad[:20]]
    lines += ["", f"Locust exit status {locust_rc}; soak {'PASSED' if ok else 'FAILED'}."]
    args.out.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    (args.out / "soak.md").write_text(text)
    return text, ok


def _mb(size: str) -> float:
    size = size.lower()
    for suffix, scale in (("gb", 1024), ("mb", 1), ("kb", 1 / 1024)):
        if size.endswith(suffix):
            return float(size[: -len(suffix)]) * scale
    return float(size) / 2**20


if __name__ == "__main__":
    sys.exit(main())
