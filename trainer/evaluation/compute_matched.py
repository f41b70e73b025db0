"""The compute-matched search comparison over several seeds: the search sections of several `repirl eval` runs (one
per --seed, `--sections search --search-task both --search-all-prms`) merged into docs/results/search_seeds.json,
which the report renders as its own section (report.py loads it like service_check.json, so `repirl eval` and
`make report` keep it).

    python -m trainer.evaluation.compute_matched --out docs/results/search_seeds.json \\
        --command "repirl eval ... --seed 0" ... DIR0/results/results.json DIR1/... DIR2/...
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

PF = "particle filtering"  # the row the target is about (the default knobs), and the baselines it is held against
BASELINES = ("beam", "best-of-{n} (PRM-weighted vote)")


def merge(paths: list[str], commands: list[str], notes: list[str] | None = None) -> dict:
    runs = [json.loads(Path(p).read_text())["search"] for p in paths]
    tasks: dict[str, dict[str, dict[str, list[dict]]]] = {}
    prms: list[str] = []
    for run in runs:
        for key, rows in run["prms"].items():
            prm, _, task = key.rpartition(", ")
            prms += [prm] if prm not in prms else []
            for strategy, row in rows.items():
                tasks.setdefault(task, {}).setdefault(strategy, {}).setdefault(prm, []).append(row)
    out = {"problems": runs[0]["problems"], "n": runs[0]["n"], "temperature": runs[0]["temperature"],
           "seeds": [r.get("seed") for r in runs], "prms": prms, "commands": commands, "notes": notes or [],
           "tasks": {}}
    for task, strategies in tasks.items():
        for strategy, by_prm in strategies.items():
            for prm, rows in by_prm.items():
                m = sum(r["problems"] for r in rows)
                acc = sum(r["accuracy"] * r["problems"] for r in rows) / m
                out["tasks"].setdefault(task, {}).setdefault(strategy, {})[prm] = {
                    "accuracy": acc, "se": math.sqrt(acc * (1 - acc) / m), "problem_seeds": m,
                    "seed_accuracy": [r["accuracy"] for r in rows],
                    "policy_tokens": sum(r["policy_tokens_per_problem"] for r in rows) / len(rows),
                    "prm_tokens_computed": sum(r["prm_tokens_computed_per_problem"] for r in rows) / len(rows)}
    return out


def _row(strategies: dict, start: str) -> tuple[str, dict] | None:
    return next(((k, v) for k, v in strategies.items() if k.startswith(start)), None)


def verdicts(d: dict) -> list[str]:
    """Particle filtering (default knobs) at equal policy tokens against beam and weighted best-of-N, per split and
    PRM: met when it is at or above both, else by how many points it misses."""
    lines = []
    for task, strategies in d["tasks"].items():
        pf = next(((k, v) for k, v in strategies.items() if k.startswith(PF) and "every step" not in k), None)
        if pf is None:
            continue
        for prm in d["prms"]:
            if prm not in pf[1]:
                continue
            got = pf[1][prm]
            gaps = []
            for base in BASELINES:
                found = _row(strategies, base.format(n=d["n"]))
                if found:
                    b = found[1][prm]
                    gaps.append(f"{found[0]} {b['accuracy']:.3f} ({(got['accuracy'] - b['accuracy']) * 100:+.1f} "
                                f"points, {b['policy_tokens']:.0f} policy tokens)")
            ok = all(got["accuracy"] >= _row(strategies, b.format(n=d["n"]))[1][prm]["accuracy"]
                     for b in BASELINES if _row(strategies, b.format(n=d["n"])))
            lines.append(f"- {task}, {prm}: {pf[0]} {got['accuracy']:.3f} at {got['policy_tokens']:.0f} policy tokens "
                         f"vs {'; '.join(gaps)}: **{'met' if ok else 'missed'}** (standard error of one accuracy "
                         f"about {got['se']:.3f})")
    return lines


def markdown(d: dict) -> list[str]:
    lines = ["## 5b. Compute-matched test-time scaling over seeds (particle filtering, particle Gibbs, adaptive)", "",
             f"{d['problems']} held-out problems per split x {len(d['seeds'])} seeds ({', '.join(map(str, d['seeds']))}"
             f"), n={d['n']}, T={d['temperature']}; particle Gibbs runs n/2 particles x 2 sweeps, so every strategy "
             "samples at most n trajectories' worth of steps. Accuracy over all problem-seeds (± its standard error), "
             "the range of the per-seed accuracies, and policy tokens per problem (each PRM's own search tree). "
             "Merged by `python -m trainer.evaluation.compute_matched` from:", ""]
    lines += [f"    {c}" for c in d["commands"]] + [""]
    prms = d["prms"]
    for task, strategies in d["tasks"].items():
        lines += [f"**{task}**", "",
                  "| strategy | policy tokens (" + " / ".join(prms) + ") | " + " | ".join(prms)
                  + f" | PRM tokens computed ({prms[-1]}) |",
                  "|---|---:|" + "---:|" * len(prms) + "---:|"]
        for strategy, by_prm in strategies.items():
            tokens = " / ".join(f"{by_prm[p]['policy_tokens']:.0f}" if p in by_prm else "n/a" for p in prms)
            accs = " | ".join(f"{by_prm[p]['accuracy']:.3f} ± {by_prm[p]['se']:.3f} "
                              f"({min(by_prm[p]['seed_accuracy']):.2f}-{max(by_prm[p]['seed_accuracy']):.2f})"
                              if p in by_prm else "n/a" for p in prms)
            last = by_prm.get(prms[-1])
            lines.append(f"| {strategy} | {tokens} | {accs} | "
                         f"{'n/a' if last is None else format(last['prm_tokens_computed'], '.0f')} |")
        lines.append("")
    lines += ["Target (issue 25): particle filtering at equal policy tokens at or above beam search and PRM-weighted "
              "best-of-N on both splits.", ""] + verdicts(d) + [""]
    if d.get("notes"):  # what the verdicts alone would not say (measured beside the runs, see each note)
        lines += [f"- {n}" for n in d["notes"]] + [""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results.json of each `repirl eval` run (one per seed)")
    ap.add_argument("--command", action="append", default=[], help="the command behind each run (for the report)")
    ap.add_argument("--note", action="append", default=[], help="a finding to print under the verdicts")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = merge(args.results, args.command, args.note)
    Path(args.out).write_text(json.dumps(data, indent=1))
    print("\n".join(markdown(data)))


if __name__ == "__main__":
    main()
