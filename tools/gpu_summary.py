"""The last table of tools/gpu_session.sh: every figure the session's sections wrote into OUT (bench.json,
rollouts.json, gpucheck.json, service.json, .sections), one line each; missing ones say so.

    python3 tools/gpu_summary.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(out: Path, name: str) -> dict:
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return {}


def _pct(x):
    return f"{x:.1%}" if isinstance(x, (int, float)) else "-"


def _num(x, fmt="{:,.0f}"):
    return fmt.format(x) if isinstance(x, (int, float)) else "-"


def lines(out: Path) -> list[str]:
    rows: list[tuple[str, str]] = []
    add = lambda k, v: rows.append((k, v))  # noqa: E731
    bench, roll, check, svc = (_load(out, f) for f in ("bench.json", "rollouts.json", "gpucheck.json", "service.json"))
    add("device", f"{bench.get('device', check.get('device', '-'))}, torch {bench.get('torch', '-')}")
    a = bench.get("anchor", {})
    add("anchor: HF fwd+bwd+AdamW, bf16 autocast, 32x256",
        f"{_num(a.get('tokens_per_s'))} tokens/s, MFU {_pct(a.get('mfu'))}, peak {a.get('peak_gib', '-')} GiB"
        if "tokens_per_s" in a else a.get("error", "missing"))
    for name, r in bench.get("update", {}).items():
        if isinstance(r, dict):
            add(f"update: trainer policy_step, {name}",
                f"{_num(r.get('tokens_per_s'))} tokens/s, MFU {_pct(r.get('mfu'))}, x{r.get('vs_anchor', '-')} anchor, "
                f"peak {r.get('peak_gib', '-')} GiB" if "tokens_per_s" in r else r.get("error", "missing"))
    k = bench.get("kernels", {})
    for name, r in k.items():
        if isinstance(r, dict):
            add(f"kernels ({k.get('positions')} positions): {name}",
                f"{r.get('ms', '-')} ms fwd+bwd, peak {r.get('peak_gib', '-')} GiB, max |lp - full| "
                f"{r.get('max_abs_diff_vs_full', '-')}" if "ms" in r else str(r.get("skipped") or r.get("error")))
    m = bench.get("memory", {})
    if m:
        add(f"memory: bf16 logits {m.get('logits_shape')}",
            f"{m.get('bf16_gb')} GB, fp32 copy {m.get('fp32_copy_gb')} GB")
    prof = bench.get("profile", {})
    for r in prof.get("top", [])[:6]:
        add(f"profile top op ({prof.get('sorted_by')})", f"{r['op']}: {r['ms']} ms, {r['calls']} calls")
    r = roll.get("rollouts") or bench.get("rollouts", {})  # its own process in the session, else in bench.json
    for name in ("plain_generate_bf16", "trainer_hfengine", "previous_hfengine"):
        x = r.get(name, {})
        add(f"rollouts {r.get('sequences', '-')}x{r.get('max_new_tokens', '-')}: {name}",
            f"{_num(x.get('tokens_per_s'))} tokens/s" + (f", x{x['vs_plain']} plain" if "vs_plain" in x else "")
            if "tokens_per_s" in x else str(x.get("error", "missing")))
    for i, it in enumerate(check.get("iterations", []), 1):
        add(f"gpu-check iter {i}", f"rollouts {_num(it['rollout_tokens_per_s'])} tok/s; update "
            f"{_num(it['update_tokens_per_s'])} tok/s, MFU {_pct(it['update_mfu'])}; peak {it.get('peak_rollout_gib')} "
            f"GiB rollouts / {it['peak_gib']} GiB updates; "
            f"phases {it['t_rollout']}/{it['t_prm']}/{it['t_policy']}/{it['t_other']} s (roll/PRM/policy/other); "
            f"log-prob check {it['logprob_check']}")
    for ep in ("score", "search"):
        x = svc.get(ep, {})
        add(f"service /v1/{ep}", (f"{x.get('items_per_s') if ep == 'score' else x.get('requests_per_s')} "
                                  f"{'items' if ep == 'score' else 'searches'}/s, p50 {x.get('p50_ms')} ms, p99 "
                                  f"{x.get('p99_ms')} ms, errors {x.get('errors')}") if x else "missing")
    if svc:
        add("service start", f"ready {svc.get('ready_s')} s, GPU memory {svc.get('gpu_memory')}, {svc.get('banner')}")
    try:
        for ln in (out / ".sections").read_text().splitlines():
            name, rc, secs = ln.split()
            add(f"section {name}", f"rc {rc}, {secs} s")
    except OSError:
        pass
    width = max(len(k) for k, _ in rows)
    return ["== summary"] + [f"{k:<{width}}  {v}" for k, v in rows]


if __name__ == "__main__":
    print("\n".join(lines(Path(sys.argv[1] if len(sys.argv) > 1 else "."))))
