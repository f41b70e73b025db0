"""Fit a PRM's calibration (raw step reward -> p_correct) on held-out verifiable steps and store it in prm.json.

Labelled steps: solutions whose first wrong step the task's step checker knows (policy samples on the dev problems,
the evaluator's threshold split, never the held-out test problems the report scores; optionally the dev references
with one corrupted step, trainer/evaluation/steperror.py). Step k is labelled 1 when the solution is still error-free
through step k (k < first wrong step, or no wrong step), 0 from the first wrong step on: the event a causal PRM's
step reward can see, and the one first-error thresholds act on.

Fit: Platt scaling, p = sigmoid(a * raw + b), by Newton's method on the log loss (2 parameters), with Platt's
smoothed targets ((N+ + 1) / (N+ + 2) and 1 / (N- + 2)) so one-class or separable data still give finite numbers.
The problems are split: 2/3 fit the mapping, the other 1/3 measure ECE (10 equal-width bins) before (the raw reward
read as a probability: itself for probability formats, its sigmoid otherwise) and after.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from repirl.calibration import Calibration, sigmoid
from trainer.data import DEV_SEED

N_BINS = 10


def step_labels(n_steps: int, first_wrong: int | None) -> list[int]:
    """1 while the solution is error-free through step k, 0 from the first wrong step on."""
    return [1 if first_wrong is None or k < first_wrong else 0 for k in range(n_steps)]


def fit_platt(raw: Sequence[float], labels: Sequence[int], smooth: bool = True,
              max_iter: int = 100) -> tuple[float, float]:
    """(a, b) minimising the log loss of sigmoid(a * raw + b) against the labels (Newton + backtracking)."""
    import numpy as np

    x, y = np.asarray(raw, dtype=float), np.asarray(labels, dtype=float)
    if x.size == 0 or x.size != y.size:
        raise ValueError(f"need as many labels as rewards (> 0), got {x.size} and {y.size}")
    n_pos = float(y.sum())
    t = np.where(y > 0.5, (n_pos + 1) / (n_pos + 2), 1 / (x.size - n_pos + 2)) if smooth else y
    mu, sd = float(x.mean()), float(x.std())
    sd = sd if sd > 1e-12 else 1.0  # constant rewards: only b is identifiable (a stays 0)
    z = (x - mu) / sd  # standardised: raw rewards like 5.3-5.5 would make the Hessian ill-conditioned

    def loss(w):
        s = w[0] * z + w[1]
        return float(np.sum(np.logaddexp(0.0, s) - t * s))

    w = np.zeros(2)
    f = loss(w)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(w[0] * z + w[1])))
        g = np.array([np.sum((p - t) * z), np.sum(p - t)])
        h = p * (1 - p)
        hess = np.array([[np.sum(h * z * z), np.sum(h * z)], [np.sum(h * z), np.sum(h)]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, g)
        lr = 1.0
        while lr > 1e-10:
            cand = w - lr * step
            f_new = loss(cand)
            if f_new <= f - 1e-4 * lr * float(g @ step):
                break
            lr /= 2
        else:
            break
        w, converged = cand, f - f_new < 1e-12 * max(1.0, abs(f))
        f = f_new
        if converged or float(np.abs(g).max()) < 1e-10:
            break
    a = float(w[0] / sd)
    return a, float(w[1] - a * mu)


def _bin(p: float, bins: int) -> int:
    return min(int(p * bins), bins - 1)


def reliability(probs: Sequence[float], labels: Sequence[int], bins: int = N_BINS) -> list[dict]:
    """Per equal-width bin of [0, 1]: its range, step count, mean predicted probability and observed frequency."""
    rows = [{"lo": i / bins, "hi": (i + 1) / bins, "count": 0, "confidence": None, "accuracy": None}
            for i in range(bins)]
    sums = [[0.0, 0.0] for _ in range(bins)]
    for p, y in zip(probs, labels, strict=True):
        k = _bin(p, bins)
        rows[k]["count"] += 1
        sums[k][0] += p
        sums[k][1] += y
    for row, (sp, sy) in zip(rows, sums):
        if row["count"]:
            row["confidence"], row["accuracy"] = sp / row["count"], sy / row["count"]
    return rows


def ece(probs: Sequence[float], labels: Sequence[int], bins: int = N_BINS) -> float:
    """Expected calibration error: sum over bins of (share of steps) * |mean probability - observed frequency|."""
    n = len(probs)
    if n == 0:
        return float("nan")
    return sum(r["count"] / n * abs(r["confidence"] - r["accuracy"]) for r in reliability(probs, labels, bins)
               if r["count"])


def raw_as_probability(raws: Sequence[float], fmt: str) -> list[float]:
    """The uncalibrated reading: a probability format's score as is, any other score through the sigmoid."""
    from repirl.scoring.formats import format_facts

    if format_facts(fmt).is_probability:
        return [min(max(r, 0.0), 1.0) for r in raws]
    return [sigmoid(r) for r in raws]


@dataclass
class LabelledSolution:
    question: str
    steps: list[str]
    first_wrong_step: int | None
    group: int  # the problem it belongs to (the fit / check split is by problem)


def policy_solutions(policy, task, problems, samples: int, temperature: float, seed: int, max_step_tokens: int = 32,
                     max_steps: int = 8) -> list[LabelledSolution]:
    """`samples` policy samples per problem (the evaluator's sampler: run_search best-of-n, the same seeds),
    checker-labelled. A problem whose samples outgrow the policy's context is left out."""
    from repirl.policy.base import PolicyError
    from trainer.evaluation.bestofn import SampleConfig, sample_problems

    out = []
    for g, p in enumerate(problems):
        cfg = SampleConfig(n=samples, temperature=temperature, seed=seed + 7919 * g, max_steps=max_steps,
                           max_step_tokens=max_step_tokens)
        try:
            (ss,) = sample_problems(policy, task, [p], cfg)
        except PolicyError:  # e.g. an untrained policy that never ends a step fills its context
            continue
        out += [LabelledSolution(p.question, list(s.steps), s.first_wrong_step, g) for s in ss if s.steps]
    return out


def corrupted_solutions(task, problems, seed: int) -> list[LabelledSolution]:
    """Each problem's reference and a copy with one wrong result (labels checked by the task's step checker)."""
    from trainer.evaluation.steperror import check_corrupted, corrupted_set

    items = corrupted_set(problems, seed)
    check_corrupted(task, items)
    index = {p.question: g for g, p in enumerate(problems)}
    return [LabelledSolution(p.question, steps, k, index[p.question]) for p, steps, k in items]


def score_steps(scorer, solutions: Sequence[LabelledSolution]) -> list[tuple[int, list[float], list[int]]]:
    """(group, raw step rewards, step labels) per solution, scored by the PRM's StepScorer."""
    from trainer.evaluation.bestofn import score_samples
    from trainer.evaluation.metrics import Sample

    samples = [Sample(answer=None, correct=s.first_wrong_step is None, steps=s.steps,
                      first_wrong_step=s.first_wrong_step) for s in solutions]
    score_samples(scorer, "prm", [s.question for s in solutions], [[x] for x in samples])
    return [(s.group, x.step_rewards["prm"], step_labels(len(x.step_rewards["prm"]), s.first_wrong_step))
            for s, x in zip(solutions, samples)]


class OneClass(ValueError):
    """The labelled steps have one label only (or none): no calibration can be fitted."""


def fit_calibration(scored: Sequence[tuple[int, list[float], list[int]]], fmt: str, revision: str, data: str,
                    seed: int = 0, check_fraction: float = 1 / 3) -> Calibration:
    """Platt on the fit problems' steps; ECE before/after on the other problems' steps."""
    groups = sorted({g for g, _, _ in scored})
    rng = random.Random(seed)
    check = set(rng.sample(groups, int(len(groups) * check_fraction))) if len(groups) > 2 else set()
    fit_x = [r for g, rs, _ in scored if g not in check for r in rs]
    fit_y = [y for g, _, ys in scored if g not in check for y in ys]
    chk_x = [r for g, rs, _ in scored if g in check for r in rs]
    chk_y = [y for g, _, ys in scored if g in check for y in ys]
    if len(set(fit_y)) < 2:
        raise OneClass(f"the {len(fit_y)} labelled steps are all {'error-free' if fit_y and fit_y[0] else 'wrong'}: "
                       "nothing tells a right step from a wrong one")
    a, b = fit_platt(fit_x, fit_y)
    cal = Calibration(a=a, b=b, revision=revision, n_steps=len(fit_x), n_positive=sum(fit_y),
                      n_check_steps=len(chk_x), data=data)
    if chk_x:
        cal.ece = ece(cal.p_correct_all(chk_x), chk_y)
        cal.ece_raw = ece(raw_as_probability(chk_x, fmt), chk_y)
    return cal


def write_calibration(prm_dir: str | Path, cal: Calibration | None) -> None:
    """Rewrite prm.json with `calibration` set (atomically: temp file, then rename); None removes it."""
    from repirl.artifacts import PRM_JSON, atomic_write_text, load_prm_config

    cfg = load_prm_config(prm_dir).model_copy(update={"calibration": cal})
    atomic_write_text(Path(prm_dir) / PRM_JSON, cfg.model_dump_json(indent=2))


def _arithmetic_config(task, policy):
    """The task to draw dev problems from: the recipe's (when given), else the policy's policy.json task."""
    from repirl.tasks.arithmetic import ArithmeticConfig
    from trainer.evaluation.bestofn import policy_task_config

    if task is None:
        name = (getattr(policy.config, "task", None) or {}).get("name")
        return policy_task_config(policy) if name in (None, "arithmetic") else None
    if task.name != "arithmetic":
        return None
    return ArithmeticConfig(min_ops=task.min_ops, max_ops=task.max_ops, max_operand=task.max_operand,
                            max_multiplier=task.max_multiplier)


def calibrate_prm_folder(prm_dir: str | Path, policy_dir: str | Path | None, cfg=None, task=None,
                         say: Callable[[str], None] = print) -> Calibration | None:
    """Fit and store the calibration of one PRM folder (the trainer calls this after exporting the PRM). cfg: a
    trainer.config.CalibrationConfig (problems 0 = off); task: the recipe's TaskConfig (None: the policy's).
    Returns None, saying why, when there is nothing to calibrate on."""
    from repirl.artifacts import PRM_JSON
    from trainer.config import CalibrationConfig

    cfg = cfg or CalibrationConfig()
    prm_dir = Path(prm_dir)
    if cfg.problems == 0 or not (prm_dir / PRM_JSON).is_file():
        return None
    if policy_dir is None or not (Path(policy_dir) / "config.json").is_file():
        say(f"calibration skipped: no policy folder to sample from ({policy_dir})")
        return None
    from repirl.policy import load_policy
    from repirl.scoring.loader import load_scorer
    from repirl.tasks.arithmetic import ArithmeticTask
    from trainer.evaluation.bestofn import heldout_problems

    policy = load_policy(policy_dir, engine="transformers")
    task_cfg = _arithmetic_config(task, policy)
    if task_cfg is None:
        say("calibration skipped: only the arithmetic task has a step checker with dev problems here")
        return None
    problems, arith = heldout_problems(task_cfg, cfg.problems, "dev"), ArithmeticTask(task_cfg)
    sols = []
    if cfg.source in ("samples", "both"):
        sols += policy_solutions(policy, arith, problems, cfg.samples, cfg.temperature, cfg.seed,
                                 cfg.max_step_tokens, cfg.max_steps)
    if cfg.source in ("corrupted", "both"):
        sols += corrupted_solutions(arith, problems, cfg.seed + 1)
    scorer = load_scorer(prm_dir, engine="hf")
    data = (f"{cfg.source}: {len(problems)} dev problems (seed {DEV_SEED}), {len(sols)} solutions"
            + (f", {cfg.samples} samples each at T={cfg.temperature}" if cfg.source != "corrupted" else ""))
    return _fit_and_write(prm_dir, scorer, sols, data, cfg.seed, say)


def _fit_and_write(prm_dir: Path, scorer, sols, data: str, seed: int, say) -> Calibration | None:
    from repirl.artifacts import scoring_revision

    context = getattr(scorer, "context_tokens", None)  # past its trained positions a PRM's rewards are garbage
    if context is not None:
        sols = [s for s in sols if len(scorer.encoder.encode(s.question, s.steps).ids) <= context]
    if not sols:
        say(f"calibration skipped: no labelled solutions ({data})")
        return None
    try:
        cal = fit_calibration(score_steps(scorer, sols), scorer.config.format, scoring_revision(scorer.config), data,
                              seed)
    except OneClass as e:
        say(f"calibration skipped: {e} ({data})")
        return None
    write_calibration(prm_dir, cal)
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    say(f"calibration: p_correct = sigmoid({cal.a:.4g} * raw + {cal.b:.4g}) from {cal.n_steps} steps "
        f"({cal.n_positive} error-free so far); ECE on {cal.n_check_steps} check steps {f(cal.ece_raw)} raw -> "
        f"{f(cal.ece)} calibrated; wrote {prm_dir / 'prm.json'}")
    return cal


def calibrate_offline(prm_dir: str | Path, held_out, cfg=None,
                      say: Callable[[str], None] = print) -> Calibration | None:
    """The offline algorithm's calibration: its held-out questions' candidates, labelled by the calculator-note
    step checker (GSM8KTask); a wrong final answer whose notes are all true has no known first error and is left
    out (as in trainer/evaluation/gsm8k_rerank.note_labelled). held_out: (reference or None, question, candidates)."""
    from repirl.scoring.loader import load_scorer
    from repirl.tasks.base import Problem
    from repirl.tasks.gsm8k import GSM8KTask
    from trainer.config import CalibrationConfig

    cfg = cfg or CalibrationConfig()
    if cfg.problems == 0 or not (Path(prm_dir) / "prm.json").is_file():
        return None
    checker, sols = GSM8KTask(), []
    for g, (ref, question, cands) in enumerate(held_out):
        problem = ref or Problem(id=str(g), question=question, steps=[], answer="")
        for c in cands:
            first = checker.check(problem, c.steps).first_wrong_step if c.steps else None
            if c.steps and (first is not None or c.correct):
                sols.append(LabelledSolution(question, list(c.steps), first, g))
    data = f"offline held-out candidates: {len(held_out)} questions, {len(sols)} note-labelled solutions"
    return _fit_and_write(Path(prm_dir), load_scorer(prm_dir, engine="hf"), sols, data, cfg.seed, say)
