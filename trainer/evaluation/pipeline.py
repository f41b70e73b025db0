"""Runs the evaluation sections and keeps their results in one JSON file (docs/results/results.json), saved after
every section, so the report can be re-rendered without re-sampling and a crash loses one section at most."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from repirl.artifacts import atomic_write_text
from repirl.tasks.arithmetic import ArithmeticTask
from trainer.evaluation import bestofn, gsm8k_rerank, policies, search_cost, steperror
from trainer.evaluation.bestofn import HARDER, IN_DIST, TASK_LABELS
from trainer.evaluation.metrics import NS

SECTIONS = ("bestofn", "steperror", "gsm8k", "policies", "search")


@dataclass
class EvalConfig:
    policy: str  # the policy whose samples are reranked and searched (a folder or URL, as load_policy takes)
    prms: dict[str, str]  # display name -> PRM folder
    runs: list[str] = field(default_factory=list)  # run folders for the policy-accuracy table
    gsm8k_prm: str | None = None  # a PRM trained offline on GSM8K (its run folder's parent holds config.yaml)
    sections: tuple[str, ...] = SECTIONS
    problems: int = 100  # held-out problems per best-of-N setting
    dev_problems: int = 60  # dev split for the step-error threshold
    n: int = 32  # samples per problem (curves go up to this N)
    temperatures: tuple[float, ...] = (0.8, 1.0)
    n_subsets: int = 8
    seed: int = 0
    policy_engine: str = "auto"
    prm_engine: str = "hf"
    policy_problems: int = 100
    policy_samples: int = 4
    search_problems: int = 40
    search_n: int = 16
    search_task: str = "in-distribution"  # or "harder", or "both"
    search_all_prms: bool = False  # the search comparison with every PRM (default: the first rePIRL one)
    beam_width: int = 4
    gsm8k_limit: int | None = 400
    max_step_tokens: int = 32
    max_steps: int = 8
    cache_dir: str | None = "runs/eval-cache"  # sampled rollouts, reused across evaluations (None: never cached)
    ns: tuple[int, ...] = NS


def run_evaluation(cfg: EvalConfig, out_json: Path, log: Callable[[str], None] = print) -> dict:
    from repirl.policy import load_policy
    from repirl.scoring.loader import load_scorer

    results = json.loads(out_json.read_text()) if out_json.is_file() else {}
    results["config"] = asdict(cfg)

    section_times: dict[str, float] = {}
    mark = [time.time()]

    def lap(name: str) -> None:
        section_times[name] = round(time.time() - mark[0], 1)
        mark[0] = time.time()

    def save():
        out_json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_json, json.dumps(results, indent=1, default=str))

    results["runs"] = run_summaries(cfg)
    need_policy = {"bestofn", "steperror", "search"} & set(cfg.sections)
    policy = load_policy(cfg.policy, engine=cfg.policy_engine) if need_policy else None
    scorers = {name: load_scorer(path, engine=cfg.prm_engine, name=name) for name, path in cfg.prms.items()} \
        if {"bestofn", "steperror", "search"} & set(cfg.sections) else {}
    if scorers:  # which weights each name meant in this run (section 6's check compares it with the one it served)
        results["prm_revisions"] = {name: getattr(s, "revision", None) for name, s in scorers.items()}
    in_dist = bestofn.policy_task_config(policy) if policy is not None else None

    if "bestofn" in cfg.sections or "steperror" in cfg.sections:
        settings = {}
        for task_key, task_cfg in ((IN_DIST, in_dist), (HARDER, bestofn.harder(in_dist))):
            label = TASK_LABELS[task_key]
            task = ArithmeticTask(task_cfg)
            problems = bestofn.heldout_problems(task_cfg, cfg.problems)
            for temp in cfg.temperatures:
                key = f"{label}, T={temp}"
                sample_cfg = bestofn.SampleConfig(n=cfg.n, temperature=temp, seed=cfg.seed,
                                                  max_step_tokens=cfg.max_step_tokens, max_steps=cfg.max_steps)
                samples, t_sample = cached_samples(cfg, policy, task, problems, sample_cfg, key, log)
                t_score = time.time()
                for name, scorer in scorers.items():
                    bestofn.score_samples(scorer, name, [p.question for p in problems], samples)
                prob = {name: bestofn.is_probability_scorer(s) for name, s in scorers.items()}
                settings[key] = {"task_key": task_key, "task": asdict(task_cfg), "temperature": temp,
                                 "problems": len(problems),
                                 "samples_per_problem": cfg.n, "sample_seconds": round(t_sample, 1),
                                 "score_seconds": round(time.time() - t_score, 1),
                                 "curves": bestofn.curves(samples, list(scorers), prob, cfg.ns, cfg.n_subsets,
                                                          cfg.seed),
                                 "mean_sample_accuracy": sum(s.correct for ss in samples for s in ss)
                                 / sum(len(ss) for ss in samples)}
                settings[key]["_samples"] = samples  # kept in memory for the step-error section only
                settings[key]["_questions"] = [p.question for p in problems]
                log(f"best-of-N {key}: {len(problems)} problems x {cfg.n} samples in {t_sample:.0f} s; "
                    f"pass@1 {settings[key]['curves']['oracle (pass@N)'][1]:.3f}")
        if "bestofn" in cfg.sections:
            results["bestofn"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
                                  for k, v in settings.items()}
            from trainer.evaluation import calibration  # ECE + reliability of p_correct on the same samples

            results["calibration"] = calibration.section(scorers, settings, log)
            lap("bestofn")
            save()
        if "steperror" in cfg.sections:
            results["steperror"] = step_error_section(cfg, policy, scorers, in_dist, settings, log)
            lap("steperror")
            save()

    if "gsm8k" in cfg.sections:
        results["gsm8k"] = gsm8k_section(cfg, log)
        lap("gsm8k")
        save()
    if "policies" in cfg.sections and cfg.runs:
        results["policies"] = policies_section(cfg, policy, in_dist, log)
        lap("policies")
        save()
    if "search" in cfg.sections:
        results["search"] = search_section(cfg, policy, scorers, in_dist, log)
        lap("search")
        save()
    # per section (a partial re-run replaces only its own), so the total stays the sum of what the report shows
    results.setdefault("section_seconds", {}).update({k: v for k, v in section_times.items()})
    results["total_seconds"] = round(sum(results["section_seconds"].values()), 1)
    save()
    return results


def run_summaries(cfg) -> list[dict]:
    """What each run behind the report is (algorithm, seed, iterations) and how long it trained (summary.json)."""
    folders = {Path(r) for r in cfg.runs} | {Path(p).parent for p in cfg.prms.values()}
    if cfg.gsm8k_prm:
        folders.add(Path(cfg.gsm8k_prm).parent)
    from trainer.summary import RunSummary

    out = []
    for run in sorted(folders):
        info = policies.describe_run(run)
        s = RunSummary.read(run)  # every run (bootstrap, train, offline) writes one (trainer/summary.py)
        out.append({"run": str(run), "algorithm": info.algorithm if s is None or s.kind == "bootstrap" else s.algorithm,
                    "seed": s.seed if s else info.seed, "iterations": s.iterations if s else None,
                    "train_seconds": s.train_seconds if s else None,
                    # the run's own held-out check: greedy pass@1 (the paper's figure) beside the sampled one
                    "eval_problems": s.eval_problems if s else None, "eval_temperature": s.eval_temperature if s else None,
                    "accuracy_before": s.eval_accuracy_before if s else None,
                    "accuracy": s.eval_accuracy if s else None,
                    "greedy_before": s.eval_accuracy_greedy_before if s else None,
                    "greedy": s.eval_accuracy_greedy if s else None})
    return out


def cached_samples(cfg, policy, task, problems, sample_cfg, key, log):
    """Samples are the expensive part and do not depend on the PRMs: they are kept in cfg.cache_dir, keyed by the
    policy's content hash and every sampling knob, so evaluating a new PRM re-scores without re-sampling."""
    import hashlib

    from repirl.artifacts import content_hash

    t = time.time()
    if not cfg.cache_dir or not Path(cfg.policy).is_dir():
        return bestofn.sample_problems(policy, task, problems, sample_cfg), time.time() - t
    ident = json.dumps({"policy": content_hash(cfg.policy), "engine": type(policy).__name__, "setting": key,
                        "questions": [p.question for p in problems], "sample": asdict(sample_cfg)}, sort_keys=True)
    path = Path(cfg.cache_dir) / f"samples-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        data = json.loads(path.read_text())
        log(f"best-of-N {key}: samples from the cache {path}")
        return bestofn.samples_from_json(data["samples"]), data["seconds"]
    samples = bestofn.sample_problems(policy, task, problems, sample_cfg)
    seconds = round(time.time() - t, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = [[{**vars(s), "scores": {k: v for k, v in s.scores.items() if k == bestofn.LIKELIHOOD},
               "step_rewards": {}} for s in ss] for ss in samples]
    atomic_write_text(path, json.dumps({"ident": json.loads(ident), "seconds": seconds, "samples": plain}))
    return samples, seconds


LIKELIHOOD_BASELINE = "policy likelihood (baseline, no training)"  # a scorer's name, shown as is


def find_setting(settings: dict, task_key: str, temperature: float) -> str | None:
    """The results key of the setting sampled on `task_key` at `temperature`, or None."""
    return next((k for k, s in settings.items() if s.get("task_key") == task_key
                 and s.get("temperature") == temperature), None)


def likelihood_scorer(cfg, log):
    """The policy's own log-likelihood as a step scorer (step reward = mean token log-prob of the step): the
    untrained baseline a PRM's first-error F1 must be read against. Built once per policy revision in the cache."""
    from repirl.artifacts import content_hash, load_policy_config
    from repirl.scoring.loader import load_scorer
    from trainer.models import RewardModel

    if not Path(cfg.policy).is_dir():
        return None
    out = Path(cfg.cache_dir or "runs/eval-cache") / f"likelihood-prm-{content_hash(cfg.policy)}"
    if not (out / "prm.json").is_file():
        from transformers import AutoTokenizer

        from repirl.artifacts import Provenance

        RewardModel("logprob", cfg.policy).export(out, AutoTokenizer.from_pretrained(cfg.policy),
                                                  load_policy_config(cfg.policy),
                                                  Provenance(algorithm="init", base_model=str(cfg.policy)))
        log(f"likelihood baseline for step errors: {out}")
    return load_scorer(out, engine="hf", name=LIKELIHOOD_BASELINE)


def step_error_section(cfg, policy, scorers, in_dist, settings, log) -> dict:
    task = ArithmeticTask(in_dist)
    out: dict = {"sources": {}}
    baseline = likelihood_scorer(cfg, log)
    if baseline is not None:
        scorers = {**scorers, LIKELIHOOD_BASELINE: baseline}
        for setting in settings.values():  # the policy-sample source reads step rewards off these samples
            if setting["temperature"] == max(cfg.temperatures):
                bestofn.score_samples(baseline, LIKELIHOOD_BASELINE, setting["_questions"], setting["_samples"])
    # 1. corrupted references: dev and test from different problem seeds
    dev_items = steperror.corrupted_set(bestofn.heldout_problems(in_dist, cfg.dev_problems, "dev"), cfg.seed + 1)
    test_items = steperror.corrupted_set(bestofn.heldout_problems(in_dist, cfg.problems), cfg.seed + 2)
    steperror.check_corrupted(task, dev_items + test_items)
    src = {}
    for name, scorer in scorers.items():
        dev = steperror.score_items(scorer, name, dev_items)
        test = steperror.score_items(scorer, name, test_items)
        src[name] = steperror.localisation(dev, test, name)
    out["sources"]["corrupted references (in-distribution)"] = {"dev": len(dev_items), "test": len(test_items),
                                                                 "prms": src}
    # 2. the policy's own samples (T=1.0 in-distribution and harder), checker-labelled; dev = a sampled dev split
    key = find_setting(settings, IN_DIST, max(cfg.temperatures))
    if key is not None:
        dev_problems = bestofn.heldout_problems(in_dist, cfg.dev_problems, "dev")
        dev_samples = bestofn.sample_problems(policy, task, dev_problems, bestofn.SampleConfig(
            n=8, temperature=max(cfg.temperatures), seed=cfg.seed + 99, max_step_tokens=cfg.max_step_tokens, max_steps=cfg.max_steps))
        for name, scorer in scorers.items():
            bestofn.score_samples(scorer, name, [p.question for p in dev_problems], dev_samples)
        dev = steperror.balanced([s for ss in dev_samples for s in ss if s.steps], cfg.seed)
        hard_key = find_setting(settings, HARDER, max(cfg.temperatures))
        pooled = [s for k in (key, hard_key) if k is not None for ss in settings[k]["_samples"] for s in ss if s.steps]
        test = steperror.balanced(pooled, cfg.seed, cap=400)
        if not dev or not test:  # the policy never (or always) solved them: no balanced set to score
            out["notes"] = f"policy samples: no balanced dev/test set (dev {len(dev)}, test {len(test)})"
            return out
        src = {name: steperror.localisation(dev, test, name) for name in scorers}
        out["sources"][f"policy samples ({key} + harder)"] = {"dev": len(dev), "test": len(test), "prms": src}
    for label, s in out["sources"].items():
        for name, r in s["prms"].items():
            log(f"first-error {label} / {name}: F1 {r['f1']:.3f} (err {r['acc_erroneous']:.3f}, "
                f"correct {r['acc_correct']:.3f}, threshold {r['threshold']:.4g})")
    return out


def gsm8k_section(cfg, log) -> dict:
    from repirl.scoring.loader import load_scorer

    if not cfg.gsm8k_prm:
        log("gsm8k: no PRM trained offline on GSM8K given (--gsm8k-prm); section skipped")
        return {"skipped": "no PRM trained offline on GSM8K was available"}
    prm_dir = Path(cfg.gsm8k_prm)
    skip = gsm8k_rerank.offline_limit(prm_dir.parent)
    questions, problems = gsm8k_rerank.load_candidates(skip, cfg.gsm8k_limit)
    if not problems:
        return {"skipped": f"the offline run saw all questions (limit {skip})"}
    scorer = load_scorer(prm_dir, engine=cfg.prm_engine, name="gsm8k-offline")
    t = time.time()
    res = gsm8k_rerank.rerank(scorer, "gsm8k-offline", questions, problems)
    labelled = gsm8k_rerank.note_labelled(problems)
    half = len(labelled) // 2  # first half of the questions' labelled solutions: dev; second half: test
    res["first_error"] = steperror.localisation(steperror.balanced(labelled[:half], cfg.seed),
                                                steperror.balanced(labelled[half:], cfg.seed), "gsm8k-offline")
    res.update(prm=str(prm_dir), skipped_first=skip, seconds=round(time.time() - t, 1))
    log(f"gsm8k best-of-4 on {res['questions']} questions: PRM {res['PRM rerank']:.3f}, majority "
        f"{res['majority vote']:.3f}, random {res['random (mean candidate accuracy)']:.3f}, oracle {res['oracle']:.3f}")
    return res


def policies_section(cfg, main_policy, in_dist, log) -> dict:
    from repirl.policy import load_policy

    task = ArithmeticTask(in_dist)
    problems = bestofn.heldout_problems(in_dist, cfg.policy_problems)
    rows = []
    for run in cfg.runs:
        info = policies.describe_run(Path(run))
        pol = load_policy(Path(run) / "policy", engine="transformers")
        t = time.time()
        greedy = policies.policy_accuracy(pol, task, problems, 0.0, 1, cfg.seed, max_step_tokens=cfg.max_step_tokens, max_steps=cfg.max_steps)
        sampled = policies.policy_accuracy(pol, task, problems, 0.8, cfg.policy_samples, cfg.seed,
                                           max_step_tokens=cfg.max_step_tokens, max_steps=cfg.max_steps)
        rows.append({"run": info.name, "algorithm": info.algorithm, "seed": info.seed, "greedy": greedy,
                     "sampled": sampled, "seconds": round(time.time() - t, 1)})
        log(f"policy {info.name} ({info.algorithm}, seed {info.seed}): greedy {greedy:.3f}, sampled {sampled:.3f}")
        del pol
    return {"problems": len(problems), "sampled_temperature": 0.8, "samples_per_problem": cfg.policy_samples,
            "runs": rows, "by_algorithm": policies.by_algorithm(rows)}


def search_section(cfg, policy, scorers, in_dist, log) -> dict:
    """One table per (PRM, task): `prms` is keyed by the PRM's name, with the task added when both are run."""
    tasks = ("in-distribution", "harder") if cfg.search_task == "both" else (cfg.search_task,)
    prm_names = list(scorers) if cfg.search_all_prms else \
        [next((n for n in scorers if "repirl" in n.lower()), next(iter(scorers), None))]
    if not prm_names or prm_names[0] is None:
        return {"skipped": "no PRM"}
    out = {"problems": cfg.search_problems, "task": " and ".join(tasks), "temperature": 0.8, "n": cfg.search_n,
           "beam_width": cfg.beam_width, "seed": cfg.seed, "prms": {}}
    for task_name in tasks:
        task_cfg = bestofn.harder(in_dist) if task_name == "harder" else in_dist
        task = ArithmeticTask(task_cfg)
        problems = bestofn.heldout_problems(task_cfg, cfg.search_problems)
        for prm_name in prm_names:
            rows = {}
            for label, knobs in search_cost.strategies(cfg.search_n, cfg.beam_width).items():
                rows[label] = search_cost.run_strategy(policy, scorers[prm_name], task, problems, knobs, 0.8,
                                                       cfg.seed, max_step_tokens=cfg.max_step_tokens,
                                                       max_steps=cfg.max_steps)
                log(f"search {label} with {prm_name} ({task_name}): accuracy {rows[label]['accuracy']:.3f}, "
                    f"policy tokens {rows[label]['policy_tokens_per_problem']:.0f}, PRM tokens computed "
                    f"{rows[label]['prm_tokens_computed_per_problem']:.0f} per problem")
            out["prms"][prm_name if len(tasks) == 1 else f"{prm_name}, {task_name}"] = rows
    return out
