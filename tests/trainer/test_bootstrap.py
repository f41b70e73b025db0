"""`repirl bootstrap` end to end through the CLI, on a recipe small enough for CI (the real one takes ~10 min)."""

import json
import os
import subprocess
import sys

import pytest

from repirl.artifacts import load_policy_config, load_prm_config
from repirl.vllm_setup import vllm_available
from tests.conftest import REPO

CLI = [sys.executable, "-m", "repirl.cli", "bootstrap"]


def run_cli(*args, cwd=REPO):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(CLI + list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_bootstrap_writes_loadable_artifacts_and_reports_accuracy(tmp_path):
    out = tmp_path / "demo"
    # 4 SFT steps cannot solve anything: the default window refuses the policy, clearly, and writes no PRM (sampled
    # with transformers: no vLLM engine start for 6 problems; the run below samples with vLLM, as the demo does)
    r = run_cli("--out", str(out), "--steps", "4", "--num-layers", "1", "--eval-problems", "6",
                "--eval-engine", "transformers")
    assert r.returncode == 1 and "outside its window" in r.stdout and "--accuracy-window" in r.stdout, r.stdout[-2000:]
    assert "held-out accuracy (transformers" in r.stdout, r.stdout[-2000:]
    assert not (out / "prm").exists() and json.loads((out / "bootstrap.json").read_text())["status"]
    r = run_cli("--out", str(out), "--steps", "4", "--num-layers", "1", "--eval-problems", "6",
                "--accuracy-window", "0,1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "held-out accuracy" in r.stdout
    summary = json.loads((out / "bootstrap.json").read_text())
    assert summary["heldout_problems"] == 6 and 0.0 <= summary["heldout_accuracy"] <= 1.0
    assert summary["engine"] == ("vllm" if vllm_available() else "transformers") and summary["sft_log"][-1]["step"] == 4
    from trainer.summary import RunSummary

    run = RunSummary.read(out)  # the schema every run writes, which the evaluator reads
    assert run.kind == "bootstrap" and run.iterations == 4 and run.eval_accuracy == summary["heldout_accuracy"]
    policy_cfg = load_policy_config(out / "policy")
    assert policy_cfg.task["name"] == "arithmetic" and policy_cfg.provenance.iterations == 4
    prm_cfg = load_prm_config(out / "prm")
    assert prm_cfg.format == "token-reward" and prm_cfg.step_separator == policy_cfg.step_separator

    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out / "policy")
    AutoModelForTokenClassification.from_pretrained(out / "prm")
    tok = AutoTokenizer.from_pretrained(out / "policy")
    text = "Question: Start with 7. Add 5.\nSolution:\n7+5=12\n\nAnswer: 12\n\n"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text

    again = run_cli("--out", str(out))  # an existing demo is kept, not rebuilt
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_bad_options_are_refused_with_the_reason(tmp_path):
    r = run_cli("--out", str(tmp_path / "x"), "--hidden-size", "100")
    assert r.returncode == 2 and "multiple of 64" in (r.stdout + r.stderr)
    r = run_cli("--out", str(tmp_path / "x"), "--max-ops", "1")  # below the default min_ops=2
    assert r.returncode == 2 and "min_ops" in (r.stdout + r.stderr)
    assert not (tmp_path / "x").exists()
