"""`summary.json`: what every run (bootstrap, train, offline) writes when it ends, and what the evaluator reads.

One schema instead of per-command dicts: the report used to guess among six key names for a run's time. Fields shared
by every kind are typed; what only one kind has goes into `metrics` (offline: held-out AUC / best-of-N before and after;
bootstrap: parameters, first-step accuracy). Unknown top-level keys are refused, so a writer cannot drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from repirl.artifacts import atomic_write_text

FILE = "summary.json"


class RunSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["bootstrap", "train", "offline"]
    algorithm: str  # repirl | rloo | prime | ttt | offline | sft
    seed: int
    iterations: int  # policy iterations (train), PRM steps (offline), SFT steps (bootstrap)
    train_seconds: float  # time spent training (train: the sum of the iterations' t_iter)
    eval_problems: int = 0  # held-out problems behind eval_accuracy*
    eval_temperature: float | None = None
    eval_accuracy_before: float | None = None  # held-out accuracy of the starting policy
    eval_accuracy: float | None = None  # held-out accuracy of the final policy (bootstrap: the SFT'd policy)
    # the same problems, one greedy (T=0) solution each: pass@1 as the paper reports it (train runs)
    eval_accuracy_greedy_before: float | None = None
    eval_accuracy_greedy: float | None = None
    final_train_accuracy: float | None = None  # accuracy of the last iteration's training rollouts
    train_questions: int | None = None
    heldout_questions: int | None = None
    metrics: dict[str, float | int | str | bool | None] = {}

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / FILE
        atomic_write_text(path, self.model_dump_json(indent=2))
        return path

    @classmethod
    def read(cls, run_dir: str | Path) -> "RunSummary | None":
        path = Path(run_dir) / FILE
        return cls.model_validate_json(path.read_text()) if path.is_file() else None
