"""Rollouts through vLLM: after every policy update the engine samples with the new weights (its log-probs equal the
trainer's to float precision, while stale weights would be off by far more), and the exported rePIRL PRM loads in
vLLM's pooling runner with the same token rewards as transformers."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import assert_vllm_matches_hf
from repirl.vllm_setup import vllm_available
from tests.trainer.conftest import child_env

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="no vLLM")]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_vllm_training_run_and_pooling_export(recipe, tmp_path):
    raw = recipe(name="v", iterations=3, eval_problems=4, rollouts={"engine": "vllm", "max_new_tokens": 20},
                 prm={"parameterization": "head", "lr": 1e-3}, optim={"lr": 1e-3})
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", "trainer.train_cli", "--config", str(path), "--no-progress"],
                         cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    # without a progress bar: one line per iteration, then held-out accuracy before and after, and nothing from vLLM
    # or transformers below WARNING
    out = res.stdout + res.stderr
    assert [ln.split()[1] for ln in out.splitlines() if ln.startswith("iter ")] == ["1/3", "2/3", "3/3"], out[-3000:]
    assert "held-out accuracy" in out and "before" in out and " INFO " not in out, out[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["engine"] == "vllm" for r in rows)
    assert all(r["logprob_max_abs_diff"] < 1e-4 for r in rows), [r["logprob_max_abs_diff"] for r in rows]
    assert all(r["logprob_diff_if_stale"] > 1e-2 for r in rows[1:])  # the check would catch stale weights

    prm = tmp_path / "v" / "prm"
    items = [("Start with 3. Add 4. What is the result?", ["3+4=7", "Answer: 7"]),
             ("Start with 5. Subtract 2. What is the result?", ["5-2=4", "Answer: 4"])]
    assert_vllm_matches_hf(prm, items)


def test_two_processes_sample_with_one_vllm_engine_per_rank(recipe, tmp_path):
    """torchrun with 2 processes and `engine: vllm`: each rank runs its own in-process engine (vLLM's external_launcher
    executor in the trainer's process group) on its half of the questions, and after every FSDP2 update each rank's
    engine receives the full gathered weights in memory. The log-prob check is the largest difference over both
    ranks, so a rank whose engine kept stale weights would fail it."""
    from tests.trainer.conftest import torchrun

    raw = recipe(name="v2", iterations=3, questions_per_iter=4, eval_problems=6, task={"eval_size": 6},
                 rollouts={"engine": "vllm", "max_new_tokens": 16, "kv_cache_gib": 0.25}, optim={"lr": 1e-3})
    path = tmp_path / "v2.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = torchrun("-m", "trainer.train_cli", "--config", str(path), "--no-progress")
    rows = [json.loads(line) for line in (tmp_path / "v2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [0, 1, 2]
    assert all(r["engine"] == "vllm" for r in rows)
    assert all(r["logprob_max_abs_diff"] < 1e-4 for r in rows), [r["logprob_max_abs_diff"] for r in rows]
    assert all(r["logprob_diff_if_stale"] > 1e-2 for r in rows[1:])  # the updates moved the weights the engines use
    assert all(r["t_sync"] > 0 for r in rows)  # every update was pushed
    summary = json.loads((tmp_path / "v2" / "summary.json").read_text())
    # the held-out accuracy counts the 6 problems the two engines shared out between them
    assert summary["eval_problems"] == 6 and 0 <= summary["eval_accuracy"] <= 1
    assert "held-out accuracy" in out.stdout + out.stderr
