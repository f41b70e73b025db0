"""ProcessBench for any PRM: a model folder (scored in-process) or a deployed service (`/v1/score` through the SDK).

Data: ProcessBench's JSONL layout, one solution per line: `problem`, `steps` (list of strings), `label` (index of
the first wrong step, -1 when every step is right), optional `id`, optional `subset` (else the file's stem names the
subset; ProcessBench ships gsm8k / math / olympiadbench / omnimath). The PRM predicts the first step whose reward is
below a threshold (-1 when none is); accuracy on erroneous solutions (predicted step == label), accuracy on correct
ones (none predicted) and their harmonic mean F1 are reported per subset, as ProcessBench does. The threshold is
given, or chosen where F1 is best on one subset (`threshold_split`) and applied unchanged to every subset.

The metrics and threshold search are the step-error evaluation's own (trainer/evaluation/metrics.py); the demo data
are built where the first wrong step is known by construction: corrupted arithmetic references
(trainer/evaluation/steperror.py) and GSM8K references with one calculator note's result changed.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from trainer.evaluation.metrics import choose_threshold, first_below, first_error_scores

Scores = list[list[float]]


@dataclass(frozen=True)
class Row:
    problem: str
    steps: list[str]
    label: int  # first wrong step, -1 = correct
    subset: str
    id: str = ""


def load_rows(paths: Sequence[str | Path]) -> list[Row]:
    """Every row of every file; a malformed line raises ValueError naming the file, line and field."""
    rows: list[Row] = []
    for path in map(Path, paths):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{n}"
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not JSON ({e})") from None
                steps, label = raw.get("steps"), raw.get("label")
                if not isinstance(raw.get("problem"), str):
                    raise ValueError(f"{where}: field 'problem' must be a string")
                if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
                    raise ValueError(f"{where}: field 'steps' must be a non-empty list of strings")
                if not isinstance(label, int) or isinstance(label, bool) or not -1 <= label < len(steps):
                    raise ValueError(f"{where}: field 'label' must be -1 or a step index below {len(steps)}, "
                                     f"got {label!r}")
                rows.append(Row(raw["problem"], steps, label, str(raw.get("subset") or path.stem),
                                str(raw.get("id", f"{path.stem}-{n}"))))
    if not rows:
        raise ValueError(f"no rows in {', '.join(map(str, paths))}")
    return rows


def write_rows(rows: Sequence[Row], path: str | Path) -> Path:
    from repirl.artifacts import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n" for r in rows))
    return Path(path)


# ---- demo data, first wrong step known by construction ------------------------------------------------------------
def arithmetic_rows(n: int, seed: int = 0) -> list[Row]:
    """n problems of the arithmetic task, each as its reference (-1) and one corrupted copy (checker-verified)."""
    from repirl.tasks.arithmetic import ArithmeticTask
    from trainer.evaluation.steperror import check_corrupted, corrupted_set

    task = ArithmeticTask()
    items = corrupted_set(task.sample(n, seed, prefix="pb"), seed)
    check_corrupted(task, items)
    return [Row(p.question, list(steps), -1 if k is None else k, "arithmetic", f"{p.id}-{'ok' if k is None else k}")
            for p, steps, k in items]


_NOTE = re.compile(r"<<([^<>=]*)=([^<>]*)>>([\d.,]+)")


def plant_error(steps: Sequence[str], rng: random.Random) -> tuple[list[str], int] | None:
    """A GSM8K reference with one calculator note's result (and the number written after it) changed; that step is
    the first wrong one, the steps before it are the untouched reference. None when no step has a numeric note."""
    candidates = [i for i, s in enumerate(steps) if _NOTE.search(s) and not s.startswith("####")]
    if not candidates:
        return None
    k = rng.choice(candidates)
    m = _NOTE.search(steps[k])
    try:
        value = float(m.group(2).replace(",", ""))
    except ValueError:
        return None
    wrong = value + rng.choice([-3, -2, -1, 1, 2, 5, 10])
    text = f"{int(wrong)}" if wrong == int(wrong) else f"{wrong:g}"
    out = list(steps)
    out[k] = steps[k][:m.start()] + f"<<{m.group(1)}={text}>>{text}" + steps[k][m.end():]
    return out, k


def gsm8k_rows(n: int, seed: int = 0, data_dir: str | Path | None = None) -> list[Row]:
    """n GSM8K test questions: each reference (-1) and one copy with a planted error (checker-verified)."""
    from repirl.tasks.gsm8k import GSM8KTask, load_gsm8k

    rng, task, rows = random.Random(seed), GSM8KTask(), []
    for p in load_gsm8k("test", data_dir):
        if len(rows) >= 2 * n:
            break
        planted = plant_error(p.steps, rng)
        if planted is None or task.check(p, p.steps).first_wrong_step is not None:
            continue  # a reference whose own notes do not check out has no known first error
        steps, k = planted
        if task.check(p, steps).first_wrong_step != k:
            raise AssertionError(f"{p.id}: planted error at step {k} not where the checker finds it: {steps}")
        rows += [Row(p.question, list(p.steps), -1, "gsm8k", f"{p.id}-ok"), Row(p.question, steps, k, "gsm8k",
                                                                               f"{p.id}-{k}")]
    return rows


# ---- scoring ---------------------------------------------------------------------------------------------------
def folder_scorer(prm_dir: str, engine: str = "hf", batch: int = 16) -> Callable[[Sequence[Row]], Scores]:
    from repirl.scoring.loader import load_scorer

    scorer = load_scorer(prm_dir, engine=engine)

    def score(rows: Sequence[Row]) -> Scores:
        out: Scores = []
        for i in range(0, len(rows), batch):
            out += [s.step_rewards for s in scorer.score([(r.problem, r.steps) for r in rows[i:i + batch]])]
        return out

    return score


def service_scorer(url: str, model: str | None = None, api_key: str | None = None,
                   batch: int = 8) -> Callable[[Sequence[Row]], Scores]:
    """`/v1/score` of a deployed service, through the SDK (batches of `batch` items: the service limits a request)."""
    from repirl_client import Client

    client = Client(base_url=url, api_key=api_key)

    def score(rows: Sequence[Row]) -> Scores:
        out: Scores = []
        for i in range(0, len(rows), batch):
            resp = client.score(items=[(r.problem, r.steps) for r in rows[i:i + batch]], model=model)
            out += [list(d.step_rewards) for d in resp.data]
        return out

    return score


# ---- the benchmark ---------------------------------------------------------------------------------------------
def evaluate(rows: Sequence[Row], scores: Scores, threshold: float | None = None,
             threshold_split: str | None = None) -> dict:
    """Per-subset accuracy on erroneous / correct solutions and F1, with the threshold given or chosen on a split."""
    subsets = sorted({r.subset for r in rows}, key=lambda s: (s != "gsm8k", s))
    truth = [None if r.label < 0 else r.label for r in rows]
    chosen_on = None
    if threshold is None:
        chosen_on = threshold_split or subsets[0]
        idx = [i for i, r in enumerate(rows) if r.subset == chosen_on]
        if not idx:
            raise ValueError(f"threshold split {chosen_on!r} is not a subset of the data "
                             f"(subsets: {', '.join(subsets)})")
        threshold, _ = choose_threshold([scores[i] for i in idx], [truth[i] for i in idx])
    result = {"threshold": threshold, "threshold_chosen_on": chosen_on, "subsets": {}}
    for name in subsets:
        idx = [i for i, r in enumerate(rows) if r.subset == name]
        pred = [first_below(scores[i], threshold) for i in idx]
        result["subsets"][name] = asdict(first_error_scores(pred, [truth[i] for i in idx]))
    f1s = [s["f1"] for s in result["subsets"].values()]
    result["average_f1"] = sum(f1s) / len(f1s)
    return result


def table(result: dict, title: str):
    """A rich table of `evaluate`'s result."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("subset", "erroneous", "acc. erroneous", "correct", "acc. correct", "F1"):
        t.add_column(col, justify="left" if col == "subset" else "right")
    for name, s in result["subsets"].items():
        mark = "*" if name == result["threshold_chosen_on"] else ""
        t.add_row(name + mark, str(s["n_erroneous"]), f"{100 * s['acc_erroneous']:.1f}", str(s["n_correct"]),
                  f"{100 * s['acc_correct']:.1f}", f"{100 * s['f1']:.1f}")
    t.add_row("average", "", "", "", "", f"{100 * result['average_f1']:.1f}")
    t.caption = (f"threshold {result['threshold']:.4g}"
                 + (f", chosen on {result['threshold_chosen_on']}*" if result["threshold_chosen_on"] else ", given"))
    return t
