"""The service on a GPU (issue 26, part of `make gpu-check`): `python -m server` (= `repirl serve`) with the
transformers engines (`--engine hf`, `hf_device` auto = the GPU, bf16) on a Qwen2-0.5B-shaped token-reward PRM and
policy built in code (random weights, the repo's byte-level tokenizer), then a short load over real HTTP:

  /v1/score   C clients, each request 8 items of 4 steps, every item unique (no cache hit): items/s, p50/p99
  /v1/search  C clients, best-of-n n=4, 3 steps of up to 16 tokens, unique questions: searches/s, p50/p99

    python3 load_tests/gpu_service.py [--seconds 15] [--clients 8] [--out DIR]
    python3 load_tests/gpu_service.py --device cpu --tiny --seconds 3     # the CPU rehearsal (tiny models)

Run from the repository root. Where the image lacks the service's packages (FastAPI, uvicorn, pydantic, ...), the
wheels of `make gpu-bundle` are unpacked (trainer/gpu_check.py use_bundle) and handed to the service through
PYTHONPATH. The service's own log goes to DIR/service.log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_models(root: Path, tiny: bool, device: str) -> tuple[Path, Path]:
    """(PRM folder, policy folder): token-reward PRM (Qwen2ForTokenClassification, one label) and a causal LM."""
    import torch
    from transformers import Qwen2Config, Qwen2ForTokenClassification

    from repirl.artifacts import PRMConfig, Provenance, save_model_folder
    from repirl.tiny import build_tokenizer, tiny_qwen2_config
    from trainer.gpu_check import QWEN2_05B, build_policy

    policy, _ = build_policy(root / "policy", tiny)
    tok = build_tokenizer()
    if tiny:
        cfg = tiny_qwen2_config(len(tok), num_layers=2, intermediate_size=256, eos_token_id=tok.eos_token_id,
                                num_labels=1)
    else:
        cfg = Qwen2Config(**QWEN2_05B, num_labels=1, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    torch.manual_seed(1)
    with torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")):
        prm = Qwen2ForTokenClassification(cfg)
    prm = prm.to("cpu", torch.bfloat16 if not tiny else torch.float32)
    prov = Provenance(algorithm="init", base_model="qwen2-0.5b-shaped-random" if not tiny else "tiny-random")
    save_model_folder(prm, tok, root / "prm", prm_config=PRMConfig(format="token-reward", provenance=prov))
    return root / "prm", policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(prm: Path, policy: Path, device: str, log: Path, extra_path: str | None) -> tuple:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "REPIRL_HF_DEVICE": device,
           "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, str(REPO), os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", str(port), "--prm", f"prm={prm}",
                             "--policy", f"hf:{policy}", "--engine", "hf"], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(url: str, proc, timeout: float) -> float:
    import httpx

    t0 = time.time()
    async with httpx.AsyncClient(timeout=5) as client:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with {proc.returncode} before it was ready")
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return time.time() - t0
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the service was not ready after {timeout:.0f} s")


def _item(rng: random.Random, k: int) -> dict:
    a = rng.randint(2, 99)
    steps, x = [], a
    for _ in range(4):
        b = rng.randint(2, 9)
        steps.append(f"{x}*{b}={x * b}")
        x *= b
    return {"question": f"Start with {a} (#{k}). Multiply four times. What is the result?", "steps": steps}


async def load(url: str, path: str, body, clients: int, seconds: float, items_per_request: int = 1) -> dict:
    """`clients` concurrent loops posting body(i) to url+path for `seconds`: completed requests, latencies."""
    import httpx

    lat, errors, codes = [], 0, {}
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def worker(client):
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                r = await client.post(url + path, json=body(next(counter)))
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1
            except httpx.HTTPError:
                errors += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None  # noqa: E731
    return {"requests": len(lat), "errors": errors, "status": codes, "seconds": round(wall, 1),
            "requests_per_s": round(len(lat) / wall, 2), "items_per_s": round(len(lat) * items_per_request / wall, 1),
            "p50_ms": q(0.50), "p99_ms": q(0.99), "clients": clients}


def gpu_memory_of(pid: int) -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if parts and parts[0] == str(pid):
            return parts[1]
    return "not listed" if out else None


async def run(args) -> dict:
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu-service-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = None
    if args.bundle:
        from trainer.gpu_check import bundle_site, use_bundle

        print(use_bundle(Path(args.bundle), service=True), flush=True)
        extra = bundle_site(Path(args.bundle))
    work = Path(tempfile.mkdtemp(prefix="gpu-service-models-"))
    t0 = time.time()
    prm, policy = build_models(work, args.tiny, args.device)
    result: dict = {"models": "tiny" if args.tiny else "Qwen2-0.5B-shaped (random)",
                    "build_s": round(time.time() - t0, 1)}
    print(f"gpu-service: models built in {result['build_s']} s", flush=True)
    proc, url = start_service(prm, policy, args.device, out_dir / "service.log", extra)
    try:
        result["ready_s"] = round(await wait_ready(url, proc, args.ready_timeout), 1)
        result["gpu_memory"] = gpu_memory_of(proc.pid)
        print(f"gpu-service: ready in {result['ready_s']} s; GPU memory of the service: {result['gpu_memory']}",
              flush=True)
        rng = random.Random(0)
        k = args.items_per_request
        score_body = lambda i: {"items": [_item(rng, i * k + j) for j in range(k)]}  # noqa: E731
        await load(url, "/v1/score", score_body, 2, 1.0)  # warm-up
        result["score"] = load_row = await load(url, "/v1/score", score_body, args.clients, args.seconds, k)
        print(f"gpu-service: /v1/score {load_row['items_per_s']} items/s (requests of {k} items, "
              f"{args.clients} clients, {load_row['seconds']} s), p50 {load_row['p50_ms']} ms, "
              f"p99 {load_row['p99_ms']} ms, errors {load_row['errors']}", flush=True)
        search = {"strategy": "best-of-n", "n": 4, "max_steps": 3, "max_step_tokens": 16 if not args.tiny else 8}
        search_body = lambda i: {**search, "question": f"Start with {i}. Multiply by 3. What is it?", "seed": i}  # noqa: E731
        await load(url, "/v1/search", search_body, 1, 0.5)  # warm-up
        result["search"] = row = await load(url, "/v1/search", search_body, args.search_clients, args.seconds)
        row["params"] = search
        print(f"gpu-service: /v1/search {row['requests_per_s']} searches/s ({args.search_clients} clients, "
              f"{row['seconds']} s), p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, errors {row['errors']}",
              flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log = (out_dir / "service.log").read_text(errors="replace")
        result["banner"] = [ln for ln in log.splitlines() if "PRM prm:" in ln or "policy:" in ln][:2]
        (out_dir / "service.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--seconds", type=float, default=15.0, help="load per endpoint")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--search-clients", type=int, default=4)
    ap.add_argument("--items-per-request", type=int, default=8)
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    ap.add_argument("--bundle", default=None,
                    help="gpu_bundle/ (wheels of `make gpu-bundle`) when the image lacks the service's packages")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args(argv)
    import signal

    import torch

    # a time cap's SIGTERM (tools/gpu_session.sh) must still stop the service this started: unwind through `finally`
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.device != "cpu" and not torch.cuda.is_available():
        print("gpu-service: no GPU here (torch.cuda.is_available() is False); --device cpu --tiny rehearses it")
        return 0
    try:
        result = asyncio.run(run(args))
    except Exception as e:  # noqa: BLE001 - one line naming the failure; the log is in --out
        print(f"gpu-service: FAILED: {type(e).__name__}: {e}", flush=True)
        return 1
    ok = result.get("score", {}).get("requests", 0) > 0 and result.get("search", {}).get("requests", 0) > 0
    print(f"gpu-service: {'PASS' if ok else 'FAIL'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
