"""`make load`: a bounded headless locust run (load_tests/locustfile.py, the mixed profile by default) against a
service this script starts on loopback with its own redis-server, then a markdown report with a latency plot.

Models: runs/demo-repirl/prm (else runs/demo/prm) and the matching demo policy when they exist; otherwise a tiny
random token-reward PRM (2 layers, 2,048-token context) and the toy policy, built in code. Engines: transformers
for both by default (cheap on a small CPU; `--engine vllm --policy-engine vllm` for vLLM). The report
(load_tests/reports/load.md + load_latency.png) has, per endpoint, requests, failures, RPS and p50/p95/p99 from
locust, and from the service's /metrics (delta over the run): prefix-cache hit ratio, tokens computed vs reused,
micro-batch sizes, HTTP statuses and 429s.

Usage: python load_tests/run_load.py [--seconds 60] [--users 16] [--spawn-rate 8] [--profile MixedUser ...]
       [--engine hf|vllm|auto] [--policy-engine hf|vllm] [--out load_tests/reports] [--host URL (no service started)]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not start within {timeout:.0f} s")


def start_redis(workdir: Path, *extra: str) -> tuple[subprocess.Popen | None, str | None]:
    """A throwaway redis-server on a free loopback port (`extra`: more redis-server arguments)."""
    if not shutil.which("redis-server"):
        print("redis-server not found: the service uses its in-process cache", file=sys.stderr)
        return None, None
    import redis

    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait(lambda: redis.Redis(port=port).ping(), 30, "redis-server", proc)
    return proc, f"redis://127.0.0.1:{port}/0"


def pick_models(workdir: Path) -> tuple[Path, Path, str]:
    """(PRM folder, policy folder, where they came from)."""
    for prm, policy in (("runs/demo-repirl/prm", "runs/demo-repirl/policy"), ("runs/demo/prm", "runs/demo/policy")):
        if (REPO / prm / "prm.json").is_file() and (REPO / policy / "config.json").is_file():
            return REPO / prm, REPO / policy, f"the demo ({prm}, {policy})"
    from repirl.policy.toy import build_toy_policy
    from repirl.scoring.tiny_prms import build_tiny_prm

    prm = build_tiny_prm(workdir / "prm", "token-reward", max_position_embeddings=2048)
    return prm, build_toy_policy(), "tiny models built in code (no runs/demo: a random token-reward PRM, the toy policy)"


def start_service(work: Path, engine: str, policy_engine: str, redis_url: str | None,
                  env: dict) -> tuple[subprocess.Popen, str, str]:
    """`python -m server` on a free loopback port with the demo (or tiny) models, once /readyz says ready:
    (process, URL, a description for the report). The locustfile sizes its items to the PRM's max_model_len."""
    prm, policy, where = pick_models(work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "server", "--port", str(port), "--prm", f"prm={prm}",
           "--policy", f"{policy_engine}:{policy}", "--engine", engine]
    if redis_url:
        cmd += ["--redis-url", redis_url]
    print("starting:", " ".join(cmd), flush=True)
    server = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=open(work / "server.log", "w"),
                              stderr=subprocess.STDOUT)
    import httpx

    _wait(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 600, "the service", server)
    cache = "Redis" if redis_url else "in-process"
    return server, url, (f"`repirl serve` on {where}, PRM engine {engine}, policy engine "
                                    f"{policy_engine}, {cache} cache, default limits")


def scrape(url: str, headers: dict | None = None) -> dict:
    """/metrics as {(name, labels tuple): value}."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", headers=headers or {}, timeout=30).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _delta(before: dict, after: dict, name: str, **labels) -> float:
    def total(m):
        return sum(v for (n, ls), v in m.items() if n == name and all((k, v2) in ls for k, v2 in labels.items()))

    return total(after) - total(before)


def run_locust(host: str, seconds: int, users: int, spawn_rate: float, profile: list[str], csv_prefix: Path,
               env: dict | None = None, locustfiles: str | None = None) -> int:
    cmd = [sys.executable, "-m", "locust", "-f", locustfiles or str(LOCUSTFILE), "--headless", "-u", str(users), "-r",
           str(spawn_rate), "-t", f"{seconds}s", "--host", host, "--csv", str(csv_prefix), "--csv-full-history",
           "--only-summary", "--stop-timeout", "30", "--loglevel", "WARNING", *profile]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, timeout=seconds + 180).returncode


def _num(x: str) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def read_stats(csv_prefix: Path) -> list[dict]:
    with open(f"{csv_prefix}_stats.csv", newline="") as f:
        return list(csv.DictReader(f))


def plot_latency(csv_prefix: Path, out_png: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(f"{csv_prefix}_stats_history.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["Name"] != "Aggregated"]
    if not rows:
        return False
    t0 = min(int(r["Timestamp"]) for r in rows)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for name in sorted({r["Name"] for r in rows}):
        pts = [(int(r["Timestamp"]) - t0, _num(r["50%"]), _num(r["95%"]), _num(r["Requests/s"]))
               for r in rows if r["Name"] == name]
        lat = [(t, p50, p95) for t, p50, p95, _ in pts if p50 and p95]
        if lat:
            line, = ax1.plot([t for t, _, _ in lat], [p for _, _, p in lat], label=f"{name} p95")
            ax1.plot([t for t, _, _ in lat], [p for _, p, _ in lat], "--", color=line.get_color(), alpha=0.6)
        ax2.plot([t for t, *_ in pts], [rps or 0 for *_, rps in pts], label=name)
    ax1.set_yscale("log")
    ax1.set_ylabel("latency, ms (solid p95, dashed p50)")
    ax1.legend(fontsize=7, loc="upper left")
    ax2.set_ylabel("requests/s (locust's moving window)")
    ax2.set_xlabel("seconds since start")
    ax2.legend(fontsize=7, loc="upper left")
    fig.suptitle("repirl under locust: latency and throughput per endpoint")
    fig.tight_layout()
    fig.savefig(out_png, dpi=72)
    plt.close(fig)
    return True


def write_report(out_dir: Path, csv_prefix: Path, before: dict, after: dict, meta: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = read_stats(csv_prefix)
    plotted = plot_latency(csv_prefix, out_dir / "load_latency.png")
    lines = [f"# Load report ({meta['date']})", "",
             f"`make load` (load_tests/run_load.py): locust {meta['profile']} with {meta['users']} users for "
             f"{meta['seconds']} s, headless, on loopback. Service: {meta['service']}. Machine: {meta['machine']}.", "",
             "## Per endpoint (locust)", "",
             "| endpoint | requests | failures | RPS | p50 ms | p95 ms | p99 ms | max ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in stats:
        name = "**all**" if r["Name"] == "Aggregated" else f"`{r['Name']}`"
        lines.append(f"| {name} | {r['Request Count']} | {r['Failure Count']} | {float(r['Requests/s']):.1f} | "
                     f"{r['50%']} | {r['95%']} | {r['99%']} | {float(r['Max Response Time']):.0f} |")
    hits = _delta(before, after, "repirl_cache_hits_total")
    misses = _delta(before, after, "repirl_cache_misses_total")
    computed = _delta(before, after, "repirl_tokens_computed_total")
    reused = _delta(before, after, "repirl_tokens_reused_total")
    b_count = _delta(before, after, "repirl_batch_items_count")
    b_sum = _delta(before, after, "repirl_batch_items_sum")
    t_sum = _delta(before, after, "repirl_batch_tokens_sum")
    lines += ["", "## Service (from /metrics, delta over the run)", "",
              f"- prefix cache ({meta['cache']}): {hits:.0f} step hits, {misses:.0f} misses: hit ratio "
              f"**{hits / max(1, hits + misses):.2f}**; cache errors {_delta(before, after, 'repirl_cache_errors_total'):.0f}",
              f"- PRM tokens computed {computed:.0f}, reused (step cache or engine KV) {reused:.0f}: "
              f"{reused / max(1, computed + reused):.2f} of all tokens not recomputed",
              f"- micro-batches: {b_count:.0f}, mean **{b_sum / max(1, b_count):.1f} items** and "
              f"{t_sum / max(1, b_count):.0f} tokens per batch",
              f"- 429s from the PRM queue: {_delta(before, after, 'repirl_queue_rejections_total'):.0f} (a search "
              "over its sample budget shows as a 429 in the statuses below)"]
    buckets = sorted({float(dict(ls)["le"]) for (n, ls) in after if n == "repirl_batch_items_bucket"})
    if buckets:
        cum = [_delta(before, after, "repirl_batch_items_bucket", le=_le(b)) for b in buckets]
        cells = [f"<= {b:g}: {c - p:.0f}" for b, c, p in zip(buckets, cum, [0.0] + cum[:-1]) if c - p > 0]
        lines.append(f"- batch-size histogram (items): {', '.join(cells)}")
    statuses = {}
    for (n, ls), v in after.items():
        if n == "repirl_requests_total":
            d = dict(ls)
            if d["route"].startswith("/v1/"):
                key = (d["route"], d["status"])
                statuses[key] = statuses.get(key, 0) + v - before.get((n, ls), 0)
    lines.append("- HTTP statuses: " + ", ".join(f"{r} {s}: {c:.0f}" for (r, s), c in sorted(statuses.items()) if c))
    if plotted:
        lines += ["", "## Latency over time", "", "![latency and throughput per endpoint](load_latency.png)"]
    lines += ["", f"Locust exit status {meta['locust_rc']} (1 = some request failed). "
              f"Data: {meta['data']}."]
    path = out_dir / "load.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _le(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--spawn-rate", type=float, default=8)
    ap.add_argument("--profile", nargs="*", default=["MixedUser"], help="locust user classes")
    ap.add_argument("--engine", default="hf", choices=["hf", "vllm", "auto"], help="PRM engine")
    ap.add_argument("--policy-engine", default="hf", choices=["hf", "vllm"])
    ap.add_argument("--out", type=Path, default=REPO / "load_tests" / "reports")
    ap.add_argument("--host", help="an already running service (no service or Redis is started)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="repirl-load-"))
    redis_proc = server = None
    try:
        env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if args.host:
            url, service, cache = args.host.rstrip("/"), f"an existing service at {args.host}", "?"
        else:
            redis_proc, redis_url = start_redis(work)
            server, url, service = start_service(work, args.engine, args.policy_engine, redis_url, env)
            cache = "Redis" if redis_url else "in-process"
        from load_tests.load_data import size_to_service

        sizing = size_to_service(url, {"Authorization": f"Bearer {os.environ['REPIRL_API_KEY']}"}
                                 if os.environ.get("REPIRL_API_KEY") else None)  # what the locustfile will use
        before = scrape(url)
        csv_prefix = work / "locust"
        print(f"locust: {' '.join(args.profile)}, {args.users} users, {args.seconds} s against {url}", flush=True)
        rc = run_locust(url, args.seconds, args.users, args.spawn_rate, args.profile, csv_prefix,
                        env=env)
        after = scrape(url)
        meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "profile": " ".join(args.profile),
                "users": args.users, "seconds": args.seconds, "service": service, "cache": cache, "locust_rc": rc,
                "machine": f"{os.cpu_count()} CPUs ({platform.machine()}), load average before the run "
                           f"{os.getloadavg()[0]:.1f}",
                "data": f"GSM8K test questions (../shared/data/gsm8k/model_solutions.jsonl) and 500 demo-task problems; "
                        + sizing}
        path = write_report(args.out, csv_prefix, before, after, meta)
        print(path.read_text())
        print(f"report: {path}")
        return 0 if rc == 0 else 1
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
