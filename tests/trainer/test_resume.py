"""Kill a training process mid-run (SIGKILL, after a checkpoint), resume it, and check it finishes exactly like an
uninterrupted run: same metrics rows (timings aside) and bit-identical final policy and PRM weights."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from trainer.config import parse_config
from trainer.train_cli import run_training
from tests.trainer.conftest import child_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rows(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]


def _state(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_kill_then_resume_matches_uninterrupted(recipe, tmp_path):
    raw = recipe(name="killed", iterations=8, checkpoint_every=2, eval_problems=0,
                 rollouts={"max_new_tokens": 24}, prm={"lr": 1e-3}, optim={"lr": 1e-3})
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "trainer.train_cli", "--config", str(path), "--no-progress"]
    env = child_env()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / "killed" / "checkpoints" / "iter_000004"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_rows(tmp_path / "killed"))
    assert 4 <= done_before < 8

    res = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    ref = parse_config({**raw, "name": "reference"})
    run_training(ref)
    assert _rows(tmp_path / "killed") == _rows(tmp_path / "reference")
    for sub in ("policy", "prm"):
        a, b = _state(tmp_path / "killed" / sub), _state(tmp_path / "reference" / sub)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), sub


def test_resume_with_a_different_config_is_refused(recipe, tmp_path):
    from typer import Exit

    raw = recipe(name="r", iterations=1, eval_problems=0)
    run_training(parse_config(raw))
    with pytest.raises(Exit):
        run_training(parse_config({**raw, "seed": 1}), resume=True)
