"""The text of docs/results.md: tables, the issue's targets checked against the numbers, data / seeds / commands,
and what the numbers do not show."""

from __future__ import annotations

import math

from trainer.data import DEV_SEED, HELDOUT_SEED


def fmt(x, digits: int = 3) -> str:
    """A figure for the report's tables: `digits` decimals, "n/a" for a missing or NaN one."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def curve_at(c: dict, n: int):
    """A best-of-N curve's value at N (results.json keys are strings, fresh results' ints)."""
    return c.get(str(n), c.get(n))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _se(p, n) -> str:
    return "" if p is None or n == 0 or math.isnan(p) else f" ± {math.sqrt(max(p * (1 - p), 0) / n):.3f}"


def _task(t: dict) -> str:
    return (f"{t['min_ops']}-{t['max_ops']} operations, operands <= {t['max_operand']}, "
            f"multipliers <= {t['max_multiplier']}")


def bestofn_targets(bestofn: dict) -> list[str]:
    """The issue's target per setting and PRM: best-of-16 >= max(majority, likelihood) + 3 points, rising curve."""
    out = []
    for key, s in bestofn.items():
        c = s["curves"]
        base = max(curve_at(c["majority vote"], 16) or 0, curve_at(c["policy likelihood rerank"], 16) or 0)
        for method, cur in c.items():
            if not method.startswith("PRM rerank"):
                continue
            at16 = curve_at(cur, 16)
            if at16 is None:
                continue
            ns = sorted(int(n) for n in cur)
            rising = curve_at(cur, ns[-1]) > curve_at(cur, 1)
            ok = at16 >= base + 0.03 and rising
            verdict = "control, no target" if "untrained" in method else "met" if ok else "missed"
            out.append(f"- {key}, {method[len('PRM rerank: '):]}: best-of-16 {fmt(at16)} vs the better baseline "
                       f"{fmt(base)} ({'+' if at16 >= base else ''}{100 * (at16 - base):.1f} points), curve "
                       f"{'rises' if rising else 'does not rise'} from N=1 to N={ns[-1]}: "
                       f"**{verdict}**")
    return out


def section_bestofn(r: dict, plots: dict) -> list[str]:
    b = r["bestofn"]
    lines = ["## 1. Best-of-N on held-out synthetic problems", ""]
    if "bestofn" in plots:
        lines += [f"![best-of-N curves]({plots['bestofn']})", ""]
    first = next(iter(b.values()))
    ns = sorted(int(n) for n in first["curves"]["oracle (pass@N)"])
    for key, s in b.items():
        lines += [f"**{key}** ({s['problems']} problems, {s['samples_per_problem']} samples each, mean sample "
                  f"accuracy {fmt(s['mean_sample_accuracy'])}; {_task(s['task'])}; sampling {s['sample_seconds']} s, "
                  f"PRM scoring {s['score_seconds']} s)", ""]
        rows = [[m] + [fmt(curve_at(c, n)) for n in ns] for m, c in s["curves"].items()]
        lines += _table(["method"] + [f"N={n}" for n in ns], rows) + [""]
    p = first["problems"]
    lines += [f"Standard error of one accuracy over {p} problems: up to {0.5 / math.sqrt(p):.3f} (at 50%); "
              "differences between methods on the same samples are paired and vary less, but a few points "
              "are within noise.", "", "Targets (issue 4):", ""] + bestofn_targets(b) + [""]
    return lines


def section_steperror(r: dict, plots: dict) -> list[str]:
    lines = ["## 2. Step-error localisation (ProcessBench style)", "",
             "Prediction: the first step whose PRM step reward is below a threshold (none below: \"no error\"). "
             "The threshold maximises F1 on a dev split of other problems and is applied unchanged to the test "
             "split. F1 = harmonic mean of the accuracy on erroneous solutions (exact first wrong step) and on "
             "correct ones (no step flagged). Target (issue 4): F1 >= 0.7. Target (issue 12): on policy samples, "
             "a rePIRL PRM's F1 at least 0.03 above the policy likelihood's (the baseline row; column "
             "\"vs likelihood\").", ""]
    for label, s in r["steperror"]["sources"].items():
        lines += [f"**{label}** (dev {s['dev']}, test {s['test']} solutions, half of each erroneous)", ""]
        base = next((v["f1"] for name, v in s["prms"].items() if "baseline" in name), None)

        def vs_base(name, f1):
            if base is None or "baseline" in name:
                return "n/a" if base is None else ""
            mark = (" met" if f1 - base >= 0.03 else " missed") if "rePIRL" in name and "samples" in label else ""
            return f"{f1 - base:+.3f}{mark}"

        rows = [[name, fmt(v["threshold"], 4), fmt(v["dev_f1"]), fmt(v["acc_erroneous"]), fmt(v["acc_correct"]),
                 f"**{fmt(v['f1'])}**",
                 "control" if "untrained" in name else "baseline" if "baseline" in name
                 else "met" if v["f1"] >= 0.7 else "missed", vs_base(name, v["f1"])]
                for name, v in s["prms"].items()]
        lines += _table(["PRM", "threshold", "dev F1", "acc. erroneous", "acc. correct", "test F1", ">= 0.7",
                         "vs likelihood"], rows)
        if label in plots:
            lines += ["", f"![confusion]({plots[label]})"]
        lines += [""]
    if r["steperror"].get("notes"):
        lines += [r["steperror"]["notes"], ""]
    return lines


def section_gsm8k(r: dict) -> list[str]:
    g = r["gsm8k"]
    lines = ["## 3. Real data: best-of-4 on GSM8K model solutions", ""]
    if g.get("skipped"):
        return lines + [f"Not run: {g['skipped']}. `repirl train --config configs/offline_gsm8k.yaml` trains one; "
                        "`make report` then includes it.", ""]
    n = g["questions"]
    lines += [f"PRM `{g['prm']}` (trained by the `offline` algorithm); questions {g['skipped_first']}..."
              f"{g['skipped_first'] + n - 1} of model_solutions.jsonl ({n} questions the offline run never saw: "
              "it trained on the first `offline.limit`). Four real solutions per question (the file's 6B and 175B "
              "model samples, fine-tuning and verification). The offline recipe starts from a random tiny "
              "byte-level model (no GSM8K-capable model is available offline) and truncates trajectories to "
              "`offline.max_tokens`; about half of these solutions are longer than the model's 512 positions.", ""]
    keys = ["PRM rerank", "PRM-weighted vote", "majority vote", "random (mean candidate accuracy)", "first candidate",
            "oracle"]
    lines += _table(["method", "accuracy"], [[k, fmt(g[k]) + _se(g[k], n)] for k in keys if k in g]) + [""]
    fe = g.get("first_error")
    if fe:
        lines += [f"First-error localisation from calculator notes (dev/test = first/second half of the labelled "
                  f"solutions, balanced): threshold {fmt(fe['threshold'], 4)}, accuracy erroneous "
                  f"{fmt(fe['acc_erroneous'])}, correct {fmt(fe['acc_correct'])}, F1 {fmt(fe['f1'])} "
                  f"({fe['n_erroneous']} + {fe['n_correct']} solutions).", ""]
    return lines


def _before_after(before, after) -> str:
    if after is None:
        return "n/a"
    return f"{fmt(before)} -> {fmt(after)}" if before is not None else fmt(after)


def section_policies(r: dict, plots: dict) -> list[str]:
    p = r["policies"]
    lines = ["## 4. Policies per algorithm", "",
             f"Held-out in-distribution problems: {p['problems']}; greedy = one T=0 solution; sampled = mean "
             f"accuracy of {p['samples_per_problem']} samples at T={p['sampled_temperature']} per problem. "
             "Spread = standard deviation over the training seeds available (0 with one seed).", ""]
    rows = [[a["algorithm"], ", ".join(a["runs"]), ", ".join(map(str, a["seeds"])),
             f"{fmt(a['greedy_mean'])} ± {fmt(a['greedy_std'])}", f"{fmt(a['sampled_mean'])} ± {fmt(a['sampled_std'])}"]
            for a in p["by_algorithm"]]
    lines += _table(["algorithm", "runs", "seeds", "greedy", "sampled"], rows) + [""]
    lines += _table(["run", "algorithm", "seed", "greedy", "sampled"],
                    [[x["run"], x["algorithm"], str(x["seed"]), fmt(x["greedy"]), fmt(x["sampled"])] for x in p["runs"]])
    lines += [""] + policy_target(p["by_algorithm"])
    if "policies" in plots:
        lines += [f"![policies]({plots['policies']})", ""]
    return lines


def policy_target(by_alg: list[dict]) -> list[str]:
    """Issue 12's target: the rePIRL policy's accuracy above outcome-only RLOO's at equal iterations, means over
    seeds, by more than the spread (the larger of the two standard deviations over seeds)."""
    a = {x["algorithm"]: x for x in by_alg}
    if "repirl" not in a or "rloo" not in a:
        return []
    r, o = a["repirl"], a["rloo"]
    verdict = []
    for kind in ("greedy", "sampled"):
        d = r[f"{kind}_mean"] - o[f"{kind}_mean"]
        spread = max(r[f"{kind}_std"], o[f"{kind}_std"])
        verdict.append(f"{kind} {fmt(r[f'{kind}_mean'])} vs {fmt(o[f'{kind}_mean'])} ({d * 100:+.1f} points, "
                       f"spread {fmt(r[f'{kind}_std'])} / {fmt(o[f'{kind}_std'])}): "
                       f"**{'met' if d > spread else 'missed'}**")
    return [f"Target (issue 12), rePIRL above RLOO by more than the spread, seeds {', '.join(map(str, r['seeds']))}: "
            + "; ".join(verdict) + ".", ""]


def section_search(r: dict, plots: dict) -> list[str]:
    s = r["search"]
    if s.get("skipped"):
        return ["## 5. Search accuracy and cost", "", f"Not run: {s['skipped']}.", ""]
    lines = ["## 5. Search accuracy and cost at equal budget", "",
             f"{s['problems']} held-out {s['task']} problems, T={s['temperature']}, n={s['n']} samples "
             f"(beam/DVTS: n candidates per step, beam width {s['beam_width']}). Every search starts with a cold "
             "PRM KV cache. Tokens are per problem.", ""]
    for prm, rows in s["prms"].items():
        lines += [f"PRM: {prm}", ""]
        lines += _table(["strategy", "accuracy", "policy tokens", "PRM tokens handed", "PRM tokens computed",
                         "wall s"],
                        [[k, fmt(v["accuracy"]) + _se(v["accuracy"], v["problems"]),
                          f"{v['policy_tokens_per_problem']:.0f}", f"{v['prm_tokens_total_per_problem']:.0f}",
                          f"{v['prm_tokens_computed_per_problem']:.0f}", f"{v['wall_time_s_per_problem']:.2f}"]
                         for k, v in rows.items()]) + [""]
    if "search" in plots:
        lines += [f"![search]({plots['search']})", ""]
    return lines


def section_service(c: dict, r: dict) -> list[str]:
    names = [k for k, v in (r.get("config", {}).get("prms") or {}).items() if v.rstrip("/") == c["prm"].rstrip("/")]
    setting = (r.get("bestofn") or {}).get(f"{c['task']}, T={c['temperature']}", {})
    curve_n = curve_at(setting.get("curves", {}).get(f"PRM rerank: {names[0]}", {}), c["n"]) if names else None
    # the same path can hold another training of that run: compare only when the weights are the ones section 1 saw
    checked, evaluated = c.get("prm_revision"), (r.get("prm_revisions") or {}).get(names[0]) if names else None
    if curve_n is None:
        extra = []
    elif checked and checked == evaluated:
        extra = [f"Section 1 reports {fmt(curve_n)} for the same PRM (revision {checked}) and setting at N={c['n']} "
                 f"(subsampled from {setting.get('samples_per_problem')} samples on {setting.get('problems')} "
                 f"problems, other seeds): they differ by {fmt(abs(curve_n - c['service_accuracy']))}, against a "
                 f"standard error of the difference of about {fmt(c['two_se'] / 2)} at {c['problems']} problems.", ""]
    else:
        extra = [f"This check ran with the policy and PRM at those paths as they were then (PRM revision "
                 f"{checked or 'not recorded'}), not necessarily the ones section 1 evaluated (revision "
                 f"{evaluated or 'not recorded'}; `make report` and `make serve` retrain them on each machine): its "
                 "accuracy is not compared with section 1's; the agreement between evaluator and service above "
                 "is the check.", ""]
    return ["## 6. The service gives what the evaluator measures", "",
            f"`python load_tests/check_service_vs_eval.py --policy {c['policy']} --prm {c['prm']} --problems "
            f"{c['problems']} --n {c['n']} --engine {c['engine']} --out docs/results/service_check.json`: "
            f"best-of-{c['n']} (PRM rerank, T={c['temperature']}) on {c['problems']} held-out {c['task']} problems, "
            "once through the evaluator's code in-process and once through `POST /v1/best-of-n` of a service "
            "started with the same PRM and policy.", "",
            *_table(["", "accuracy"], [["evaluator", fmt(c["evaluator_accuracy"])],
                                       ["service", fmt(c["service_accuracy"])]]), "",
            f"Same answer on {c['same_answer']}/{c['problems']} problems, same solution on "
            f"{c.get('same_solution', 'n/a')}/{c['problems']} (seeded sampling, {c['engine']} engines on both "
            f"sides); check {'passed' if c['passed'] else 'FAILED'}.", "", *extra]


def markdown(r: dict, plots: dict, commands: list[str]) -> str:
    cfg = r.get("config", {})
    lines = ["# Results: is the learned PRM any good?", "",
             "Generated by `repirl eval` (`make report`); do not edit by hand. Every number below comes from "
             "`docs/results/results.json`, written by the same run.", "",
             "## Data, seeds, commands", "",
             f"- Policy whose samples are reranked and searched: `{cfg.get('policy')}` (engine "
             f"`{cfg.get('policy_engine')}`); PRMs: "
             + ", ".join(f"{k} = `{v}`" for k, v in (cfg.get("prms") or {}).items())
             + f" (scorer engine `{cfg.get('prm_engine')}`, each PRM's default aggregation from prm.json).",
             f"- Held-out problems: `ArithmeticTask(cfg).sample(n, seed={HELDOUT_SEED}, prefix='heldout')` (the trainer's "
             "held-out seed: no training run trains on them); in-distribution cfg = the policy's `policy.json` task "
             f"config; harder = the longest trained length or one more operation, operands x2. Dev split (thresholds): seed {DEV_SEED}, test "
             "questions removed.",
             f"- Samples: `run_search(policy, None, q, SearchParams(strategy='best-of-n', n={cfg.get('n')}, "
             f"seed={cfg.get('seed')} + 7919 * problem_index, ...))`, i.e. the service's search code; every "
             f"selection rule is `repirl.search.choose` on the same samples. Curves for N < {cfg.get('n')} average "
             f"{cfg.get('n_subsets')} random subsets per problem (all singletons for N=1), seed {cfg.get('seed')}; the "
             "oracle is the exact unbiased pass@N from the same samples. A sample that never states an answer "
             "counts as wrong.",
             f"- Evaluation time: {r.get('total_seconds', 'n/a')} s on 2 shared CPU cores (per section: "
             + ", ".join(f"{k} {v} s" for k, v in (r.get("section_seconds") or {}).items())
             + "), not counting sampling reused from the rollout cache (`runs/eval-cache`; each setting's "
             "original sampling time is listed with it).", ""]
    if commands:
        lines += ["```bash"] + commands + ["```", ""]
    if r.get("runs"):
        lines += ["Runs evaluated (trained by `make report` when missing; times from each run's summary.json "
                  "(trainer/summary.py RunSummary), 2 shared CPU cores):", ""]
        lines += _table(["run", "algorithm", "seed", "iterations / steps", "training time (s)",
                         "held-out greedy pass@1 (before -> after)", "held-out sampled (T, before -> after)"],
                        [[f"`{x['run']}`", x["algorithm"], str(x["seed"]), str(x["iterations"] or "n/a"),
                          fmt(x["train_seconds"], 0) if x["train_seconds"] is not None else "n/a",
                          _before_after(x.get("greedy_before"), x.get("greedy")),
                          (f"T={x['eval_temperature']}: " if x.get("eval_temperature") is not None else "")
                          + _before_after(x.get("accuracy_before"), x.get("accuracy"))]
                         for x in r["runs"]]) + [""]
        lines += ["The two accuracy columns are each run's own check (summary.json: its first `eval_problems` "
                  "held-out problems, one solution each); runs trained before greedy pass@1 was recorded show "
                  "n/a there. Section 4 measures every policy again on the report's problems.", ""]
    if r.get("bestofn"):
        lines += section_bestofn(r, plots)
    if r.get("steperror"):
        lines += section_steperror(r, plots)
    if r.get("calibration"):
        from trainer.evaluation import calibration

        lines += calibration.markdown(r["calibration"], plots)
    if r.get("gsm8k"):
        lines += section_gsm8k(r)
    if r.get("policies"):
        lines += section_policies(r, plots)
    if r.get("search"):
        lines += section_search(r, plots)
    if r.get("search_seeds"):
        from trainer.evaluation import compute_matched

        lines += compute_matched.markdown(r["search_seeds"])
    if r.get("service_check"):
        lines += section_service(r["service_check"], r)
    lines += ["## What these numbers do not show", ""] + NOT_SHOWN + [""]
    if r.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in r["notes"]] + [""]
    return "\n".join(lines)


NOT_SHOWN = [
    "- Tiny models (a ~1 M parameter byte-level Qwen2) on a synthetic arithmetic task: nothing here says how rePIRL "
    "behaves at scale or on natural-language reasoning; GSM8K is scored by a tiny PRM trained on a few hundred "
    "questions.",
    "- Seeds: the policy table lists every training seed evaluated; best-of-N and step-error rows are per PRM "
    "(one row per training seed), all on one fixed set of held-out problems and samples.",
    "- Best-of-N curves subsample one set of samples per problem: the N points are not independent, and the "
    "problem-level noise (see the standard errors) is shared by all methods.",
    "- The step-error test set with corrupted references contains errors of one kind (a wrong result, propagated); "
    "the policy's own errors (wrong operand, skipped step, early answer) are in the policy-sample source only.",
    "- Search costs count tokens, not time: wall time on 2 shared CPU cores says little about a GPU deployment.",
    "- Step rewards: the rePIRL PRM's step reward is the mean of the step's token rewards (prm.json step_reward); "
    "PRIME's is the sum (its paper's definition), so one fixed threshold also reacts to step length there. The "
    "first-error F1 of a rePIRL PRM is close to the untrained policy likelihood's (the baseline row): the gain over "
    "a sum comes from the step rule, not from IRL training: a rePIRL PRM starts as the policy, trains for 20 "
    "iterations (configs/demo.yaml) and its F1 stays within a few points of the likelihood's.",
    "- Best-of-N and search samples come from the policy engine named above (auto = vLLM when installed); the "
    "policy table samples with the transformers engine; the service check used the transformers engines on "
    "both sides (identical seeded samples). A vLLM-on-both-sides check was not run.",
]
