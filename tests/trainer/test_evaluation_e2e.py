"""`repirl eval` end to end on tiny models, and the evaluator's best-of-N pick against run_search's own."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner


def test_repirl_eval_writes_the_report(tmp_path, tiny_policy_dir, tiny_prm_dir):
    from repirl.cli import app

    out = tmp_path / "docs" / "results.md"
    args = ["eval", "--policy", str(tiny_policy_dir), "--prm", f"ctl={tiny_prm_dir}", "--run", str(tiny_policy_dir.parent),
            "--gsm8k-prm", str(tiny_prm_dir), "--gsm8k-limit", "2", "--problems", "2", "--dev-problems", "2",
            "--n", "2", "--temperatures", "1.0", "--policy-problems", "1", "--search-problems", "1",
            "--search-n", "2", "--beam-width", "1", "--max-steps", "2", "--max-step-tokens", "3",
            "--engine", "transformers", "--runs-dir", str(tmp_path / "none"), "--out", str(out),
            "--cache-dir", str(tmp_path / "cache")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out.parent / "results" / "results.json").read_text())
    curves = results["bestofn"]["in-distribution, T=1.0"]["curves"]
    assert set(curves) >= {"oracle (pass@N)", "majority vote", "policy likelihood rerank", "PRM rerank: ctl"}
    assert set(curves["PRM rerank: ctl"]) == {"1", "2"}
    assert "corrupted references (in-distribution)" in results["steperror"]["sources"]
    # the policy's own likelihood is scored as the untrained step-error baseline, beside every PRM
    from trainer.evaluation.pipeline import LIKELIHOOD_BASELINE

    for source in results["steperror"]["sources"].values():
        assert set(source["prms"]) == {"ctl", LIKELIHOOD_BASELINE}
    assert results["gsm8k"]["questions"] == 2 and 0 <= results["gsm8k"]["oracle"] <= 1
    assert [r["run"] for r in results["policies"]["runs"]] == [tiny_policy_dir.parent.name]
    from trainer.evaluation.search_cost import strategies

    assert list(results["search"]["prms"]["ctl"]) == list(strategies(2, 1))  # particle and adaptive rows included
    text = out.read_text()
    for heading in ("## 1. Best-of-N", "## 2. Step-error", "## 3. Real data", "## 4. Policies", "## 5. Search",
                    "do not show"):
        assert heading in text
    for png in ("bestofn.png", "first_error_corrupted.png", "search.png", "policies.png"):
        assert (out.parent / "results" / png).stat().st_size > 1000
    # a second evaluation reuses the sampled rollouts and reports the same curves
    again = CliRunner().invoke(app, args[:args.index("--sections") if "--sections" in args else len(args)]
                               + ["--sections", "bestofn"])
    assert again.exit_code == 0, again.output
    assert "samples from the cache" in again.output
    results2 = json.loads((out.parent / "results" / "results.json").read_text())
    assert results2["bestofn"]["in-distribution, T=1.0"]["curves"] == curves
    # the report re-renders from results.json alone
    (out).unlink()
    res = CliRunner().invoke(app, ["eval", "--report-only", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "## 1. Best-of-N" in out.read_text()


def test_search_comparison_on_both_tasks_with_every_prm(tmp_path, tiny_policy_dir, tiny_prm_dir):
    from repirl.cli import app

    out = tmp_path / "r.md"
    res = CliRunner().invoke(app, [
        "eval", "--policy", str(tiny_policy_dir), "--prm", f"a={tiny_prm_dir}", "--prm", f"b={tiny_prm_dir}",
        "--sections", "search", "--search-task", "both", "--search-all-prms", "--search-problems", "1",
        "--search-n", "2", "--beam-width", "1", "--max-steps", "2", "--max-step-tokens", "3",
        "--engine", "transformers", "--runs-dir", str(tmp_path / "none"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    search = json.loads((tmp_path / "results" / "results.json").read_text())["search"]
    assert list(search["prms"]) == ["a, in-distribution", "b, in-distribution", "a, harder", "b, harder"]
    rows = search["prms"]["b, harder"]
    assert rows["particle filtering (n=2)"]["policy_tokens_per_problem"] > 0
    assert "PRM: a, harder" in out.read_text()
    res = CliRunner().invoke(app, ["eval", "--search-task", "hard", "--out", str(out)])
    assert res.exit_code == 2 and "--search-task" in res.output


def test_eval_cli_errors_name_the_option(tmp_path, tiny_policy_dir):
    from repirl.cli import app

    res = CliRunner().invoke(app, ["eval", "--policy", str(tiny_policy_dir), "--prm", str(tmp_path),
                                   "--out", str(tmp_path / "r.md")])
    assert res.exit_code == 2 and "--prm" in res.output
    res = CliRunner().invoke(app, ["eval", "--sections", "bestofn,nope", "--out", str(tmp_path / "r.md")])
    assert res.exit_code == 2 and "nope" in res.output


@pytest.mark.slow
def test_evaluator_pick_equals_run_search(tmp_path):
    """The evaluator samples once and selects afterwards; with the same seed that must be the very pick (and
    answer) run_search makes in one go, as the service would: same samples, same scores, same choice."""
    from repirl.artifacts import init_token_reward_prm
    from repirl.policy import load_policy
    from repirl.policy.toy import TOY_QUESTION, build_toy_policy
    from repirl.scoring.loader import load_scorer
    from repirl.search import SearchParams, run_search
    from repirl.tasks.arithmetic import ArithmeticTask
    from repirl.tasks.base import Problem
    from trainer.evaluation.bestofn import SampleConfig, sample_problems, score_samples
    from trainer.evaluation.metrics import select

    policy_dir = build_toy_policy()
    policy = load_policy(policy_dir, engine="transformers")
    scorer = load_scorer(init_token_reward_prm(policy_dir, tmp_path / "prm"), engine="hf", name="p")
    problem = Problem("toy", TOY_QUESTION, ["3+4=7", "7*2=14", "Answer: 14"], "14",
                      meta={"start": 3, "ops": [("+", 4), ("*", 2)]})
    for seed in (0, 5):
        samples = sample_problems(policy, ArithmeticTask(), [problem], SampleConfig(n=8, temperature=1.0, seed=seed))
        score_samples(scorer, "p", [problem.question], samples)
        assert {s.answer for s in samples[0]} >= {"14"}
        for rule in ("naive", "weighted", "majority"):
            ours = select(samples[0], rule, "p")
            theirs = run_search(policy, scorer, problem.question, SearchParams(
                n=8, temperature=1.0, seed=seed, select=rule, max_steps=8, max_step_tokens=32))
            assert ours.steps == theirs.best.steps and ours.answer == theirs.answer
            assert ours.scores["p"] == pytest.approx(theirs.best.score, abs=1e-6)


def test_discovery_names_prms_and_keeps_the_head_form_apart(tmp_path):
    """A rePIRL run with the head PRM gets its own name and its own row in the policy table (not a 4th rePIRL seed)."""
    import yaml

    from trainer.eval_cli import discover
    from trainer.evaluation.policies import by_algorithm, describe_run

    def run(name, algorithm, seed=0, **prm):
        d = tmp_path / name
        (d / "prm").mkdir(parents=True)
        (d / "prm" / "prm.json").write_text("{}")
        (d / "config.yaml").write_text(yaml.safe_dump({"algorithm": algorithm, "seed": seed, "prm": prm}))

    run("demo-repirl", "repirl", parameterization="logprob")
    run("demo-repirl-s1", "repirl", 1, parameterization="logprob")
    run("demo-repirl-head", "repirl", parameterization="head")
    run("demo-prime", "prime")
    prms, _, _ = discover(tmp_path)
    assert prms == {"PRIME (demo-prime)": str(tmp_path / "demo-prime" / "prm"),
                    "rePIRL (demo-repirl)": str(tmp_path / "demo-repirl" / "prm"),
                    "rePIRL head PRM (demo-repirl-head)": str(tmp_path / "demo-repirl-head" / "prm"),
                    "rePIRL (demo-repirl-s1)": str(tmp_path / "demo-repirl-s1" / "prm")}
    rows = [{"run": i.name, "algorithm": i.algorithm, "seed": i.seed, "greedy": 0.5, "sampled": 0.5}
            for i in map(describe_run, sorted(tmp_path.iterdir()))]
    groups = {g["algorithm"]: g["seeds"] for g in by_algorithm(rows)}
    assert groups == {"prime": [0], "repirl": [0, 1], "repirl-head": [0]}
