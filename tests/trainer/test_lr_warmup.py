"""The policy's lr warm-up (optim.warmup_steps, trainer/schedule.py; issue 24 cause 7): the lr each iteration starts
with follows the linear warm-up over optimizer steps, a resumed run restores it, and runs started before the warm-up
existed (config.yaml without the key, checkpoints without `lr_steps`) still resume, or are refused by name."""

import json
import shutil

import pytest
import torch
import yaml

from trainer.config import parse_config
from trainer.schedule import warmup_factor, warmup_scheduler
from trainer.train_cli import run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]


def _state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def _same_weights(a, b):
    sa, sb = _state(a), _state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _kill_after_checkpoint_2(run):
    """What a kill between the checkpoints of iterations 2 and 4 leaves: the newer checkpoint and the outputs gone."""
    shutil.rmtree(run / "checkpoints" / "iter_000004")
    for out in ("policy", "prm", "summary.json"):
        p = run / out
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def test_warmup_factor_and_scheduler():
    assert [warmup_factor(k, 4) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0  # no warm-up: the recipe's lr from the first step
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched, seen = warmup_scheduler(opt, 4), []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_lr_follows_the_warmup_and_a_resume_restores_it(recipe, tmp_path):
    over = dict(iterations=4, checkpoint_every=2, eval_problems=0, optim={"lr": 1e-3, "warmup_steps": 10})
    run_training(parse_config(recipe(name="straight", **over)))
    rows = _rows(tmp_path / "straight")
    steps_before = [sum(r["policy_steps"] for r in rows[:k]) for k in range(len(rows))]
    assert steps_before[-1] >= 3 and steps_before[-1] + rows[-1]["policy_steps"] >= 10  # the warm-up ends in the run
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * min(1.0, (s + 1) / 10) for s in steps_before])

    raw = recipe(name="resumed", **over)
    run_training(parse_config(raw))
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "iter_000002" / "state.json").read_text())
    assert state["lr_steps"] == {"policy": steps_before[2]}
    _kill_after_checkpoint_2(tmp_path / "resumed")
    run_training(parse_config(raw), resume=True)
    # a scheduler that restarted at step 0 would log the warm-up's first lr again in iteration 2 and end elsewhere
    assert _rows(tmp_path / "resumed") == rows
    assert _same_weights(tmp_path / "resumed" / "policy", tmp_path / "straight" / "policy")


def test_a_run_from_before_the_warmup_resumes_with_its_own_config(recipe, tmp_path):
    """config.yaml without optim.warmup_steps and checkpoints without lr_steps: what runs started before cause 7
    wrote. They resume with their own config (no warm-up, as they ran); before, the schema's new default made the
    comparison with config.yaml fail ("the config differs")."""
    over = dict(iterations=4, checkpoint_every=2, eval_problems=0, optim={"lr": 1e-3})
    run_training(parse_config(recipe(name="straight", **over)))
    raw = recipe(name="old", **over)
    run_training(parse_config(raw))
    run = tmp_path / "old"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["optim"]["warmup_steps"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    for ckpt in (run / "checkpoints").iterdir():
        meta = json.loads((ckpt / "state.json").read_text())
        del meta["lr_steps"]
        (ckpt / "state.json").write_text(json.dumps(meta))
    _kill_after_checkpoint_2(run)
    # with its own config (the old file, through the schema): it resumes and ends as an uninterrupted run
    run_training(parse_config(yaml.safe_load((run / "config.yaml").read_text())), resume=True)
    assert _rows(run) == _rows(tmp_path / "straight")
    assert _same_weights(run / "policy", tmp_path / "straight" / "policy")
    # a checkpoint without lr_steps cannot place a warm-up: a config.yaml edited to add one is refused, by name
    from trainer.loop import ResumeError, Trainer

    saved["optim"]["warmup_steps"] = 4
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    _kill_after_checkpoint_2(run)
    with pytest.raises(ResumeError, match="does not record the optimizer steps taken"):
        Trainer(parse_config(saved), resume=True)


def test_the_refusal_names_the_keys_that_differ(recipe, tmp_path):
    from trainer.loop import ResumeError, Trainer

    raw = recipe(name="r", iterations=1, eval_problems=0)
    run_training(parse_config(raw))
    with pytest.raises(ResumeError, match=r"in optim\.lr, optim\.warmup_steps; resume with the run's own config"):
        Trainer(parse_config({**raw, "optim": {"lr": 2.5e-5, "warmup_steps": 4}}), resume=True)


def test_recipes_train_the_policy_at_2_5e_5_with_a_warmup():
    from pathlib import Path

    from trainer.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("demo", "demo-head", "rloo", "prime"):
        optim = load_config(root / f"{name}.yaml").optim
        assert (optim.lr, optim.warmup_steps) == (2.5e-5, 4), name
