"""A short end-to-end run of every algorithm on a tiny random policy (seconds each), checking the run folder."""

import json

import pytest
import torch

from repirl.artifacts import load_policy_config, load_prm_config
from trainer.config import parse_config
from trainer.train_cli import run_training

ROW_KEYS = {"iter", "accuracy", "kl_init", "entropy", "policy_loss", "t_iter", "t_rollout", "reward_mean"}


def _run(raw):
    cfg = parse_config(raw)
    summary = run_training(cfg)
    run = cfg.run_dir
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == list(range(cfg.iterations))
    assert (run / "config.yaml").exists() and (run / "plots" / "overview.png").stat().st_size > 1000
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000001", "iter_000002"]
    assert load_policy_config(run / "policy").provenance.algorithm == cfg.algorithm
    assert summary["eval_problems"] == 4
    from trainer.summary import RunSummary

    assert RunSummary.read(run).model_dump() == summary and summary["kind"] == "train"  # the one schema
    assert "clip_frac" in rows[0] or rows[0]["kept_groups"] == 0
    return cfg, rows


def _weights_changed(a_dir, b_dir, cls_name="AutoModelForCausalLM"):
    import transformers

    cls = getattr(transformers, cls_name)
    a, b = cls.from_pretrained(a_dir).state_dict(), cls.from_pretrained(b_dir).state_dict()
    return any(not torch.equal(a[k], b[k]) for k in a if k in b)


def test_repirl_logprob(recipe, tiny_policy_dir):
    cfg, rows = _run(recipe(algorithm="repirl", prm={"lr": 1e-3}, optim={"lr": 1e-3, "mini_batch_size": 1}))
    assert all(r["policy_steps"] == 3 for r in rows)  # 3 questions, mini-batches of 1: three optimizer steps
    assert ROW_KEYS | {"prm_loss", "margin", "ess", "ess_frac", "prm_score"} <= set(rows[0])
    assert rows[0]["ess"] > 0 and 0 < rows[0]["ess_frac"] <= 1
    prm = load_prm_config(cfg.run_dir / "prm")
    assert prm.format == "implicit" and prm.reference_model == "reference" and prm.provenance.algorithm == "repirl"
    assert _weights_changed(cfg.run_dir / "prm", tiny_policy_dir)  # the PRM learned
    assert _weights_changed(cfg.run_dir / "policy", tiny_policy_dir)  # the policy learned
    assert rows[1]["kl_init"] > 0


def test_repirl_head_dense_with_window(recipe):
    cfg, rows = _run(recipe(algorithm="repirl", prm={"parameterization": "head", "lr": 1e-3, "max_weight_ratio": 2.0},
                            optim={"dense": True}, filters={"accuracy_window": [0.0, 1.0]}))
    assert load_prm_config(cfg.run_dir / "prm").format == "token-reward"
    assert all(abs(r["prm_score"]) <= 5.0 for r in rows)  # tanh bound


def test_hard_only_filter_keeps_unsolved_questions(recipe):
    # a random policy solves nothing: every question is "hard" and kept; a window excluding 0 keeps none
    _, rows = _run(recipe(filters={"hard_only": True}))
    assert rows[0]["kept_groups"] == 3
    _, rows = _run(recipe(name="t2", filters={"accuracy_window": [0.2, 0.8]}))
    assert rows[0]["kept_groups"] == 0 and "policy_loss" not in rows[0]  # nothing to learn from: no update


def test_rloo(recipe):
    cfg, rows = _run(recipe(algorithm="rloo"))
    assert not (cfg.run_dir / "prm").exists()  # outcome only: no PRM
    assert "prm_loss" not in rows[0]


def test_prime(recipe):
    cfg, rows = _run(recipe(algorithm="prime", prm={"lr": 1e-3}))
    prm = load_prm_config(cfg.run_dir / "prm")
    assert prm.format == "implicit" and prm.reference_model == "reference" and prm.beta == 0.05
    assert (cfg.run_dir / "prm" / "reference" / "config.json").exists()
    assert rows[0]["prm_loss"] == pytest.approx(0.6931, abs=1e-3)  # log 2: pi_phi = pi_ref at the start


def test_ttt_keeps_the_prm_frozen(recipe, tiny_policy_dir):
    cfg, rows = _run(recipe(algorithm="ttt"))
    assert not _weights_changed(cfg.run_dir / "prm", tiny_policy_dir)
    assert _weights_changed(cfg.run_dir / "policy", tiny_policy_dir)


def test_runs_are_repeatable(recipe):
    _, a = _run(recipe(name="a"))
    _, b = _run(recipe(name="b"))
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("t_")} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)


def test_offline_jsonl_with_and_without_logprobs(tmp_path, tiny_policy_dir):
    data = tmp_path / "data.jsonl"
    lines = []
    for i in range(6):
        q = f"Start with {i + 2}. Add 3. What is the result?"
        good = {"steps": [f"{i + 2}+3={i + 5}", f"Answer: {i + 5}"], "correct": True}
        bad = {"steps": [f"{i + 2}+3={i + 6}", f"Answer: {i + 6}"], "correct": False}
        if i % 2 == 0:
            good["logprob"], bad["logprob"] = -5.0, -7.0
        lines.append(json.dumps({"question": q, "steps": good["steps"], "candidates": [good, bad, dict(bad)]}))
    data.write_text("\n".join(lines) + "\n")
    raw = {"name": "off", "out_dir": str(tmp_path), "policy": str(tiny_policy_dir), "algorithm": "offline",
           "prm": {"parameterization": "head", "lr": 1e-3},
           "offline": {"source": "jsonl", "path": str(data), "holdout_fraction": 0.34, "batch_questions": 1}}
    summary = run_training(parse_config(raw))
    rows = [json.loads(line) for line in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert {r["weights"] for r in rows} == {"logprob", "uniform"}
    assert all(r["ess"] == pytest.approx(2.0) for r in rows if r["weights"] == "uniform")
    assert summary["heldout_questions"] == 2 and summary["metrics"]["prm_after_auc"] is not None
    assert summary["kind"] == "offline" and (tmp_path / "off" / "summary.json").is_file()
    assert load_prm_config(tmp_path / "off" / "prm").provenance.algorithm == "offline"


def test_offline_gsm8k_model_solutions(tmp_path, tiny_policy_dir):
    raw = {"name": "g", "out_dir": str(tmp_path), "policy": str(tiny_policy_dir), "algorithm": "offline",
           "offline": {"source": "gsm8k", "limit": 6, "holdout_fraction": 0.5, "batch_questions": 3, "max_tokens": 200}}
    summary = run_training(parse_config(raw))
    assert summary["train_questions"] == 3
    assert "likelihood_auc" in summary["metrics"] and "prm_after_best_of_n" in summary["metrics"]
