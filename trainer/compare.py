"""Does a trained PRM rank held-out rollouts better than the policy's own likelihood? (the issue's first target)

    python -m trainer.compare --policy runs/demo/policy --prm runs/demo-repirl/prm [--prm other/prm ...]
                              [--questions 200] [--n 8] [--engine auto]

Samples n rollouts per held-out question from `--policy` once, then scores the very same rollouts with the policy's
mean token log-likelihood and with each PRM (mean token reward, rePIRL's aggregation), and prints AUC (correct vs
wrong), best-of-n, majority-of-n, one sample and pass@n. Results also go to --out as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _load_prm_scorer(prm_dir: Path):
    from repirl.artifacts import load_prm_config, reference_dir
    from trainer.models import RewardModel, load_causal_lm, token_logprobs

    cfg = load_prm_config(prm_dir)
    if cfg.format == "implicit":
        model = RewardModel("logprob", prm_dir, beta=cfg.beta or 1.0).eval()
        if cfg.reference_model is None:
            return model.token_rewards
        ref = load_causal_lm(reference_dir(prm_dir, cfg)).eval()
        return lambda b: model.token_rewards(b) - (cfg.beta or 1.0) * token_logprobs(ref, b)
    if cfg.format == "token-reward":
        # the served rewards: bounded as prm.json says (what the trainer exported; repirl/scoring/formats.py)
        return RewardModel("head", prm_dir, bound=cfg.token_bound).eval().token_rewards
    raise typer.BadParameter(f"{prm_dir}: format {cfg.format} is not scored by this script")


def compare(
    policy: Path = typer.Option(..., help="the policy whose rollouts are ranked (and whose likelihood is the baseline)"),
    prm: list[Path] = typer.Option([], help="PRM folder(s) to compare"),
    questions: int = typer.Option(200, help="held-out arithmetic questions (the bootstrap's held-out seed)"),
    n: int = typer.Option(8, help="rollouts per question"),
    temperature: float = typer.Option(0.8),
    max_new_tokens: int = typer.Option(64),
    engine: str = typer.Option("auto", help="auto | vllm | transformers"),
    seed: int = typer.Option(4242),
    out: Path = typer.Option(None, help="write the results as JSON here"),
) -> None:
    import torch
    from transformers import AutoTokenizer

    from repirl.answers import answers_match, extract_answer, majority_answer
    from repirl.artifacts import load_policy_config
    from repirl.tasks.arithmetic import ArithmeticTask
    from repirl.trajectory import TrajectoryEncoder
    from trainer.algorithms import batch_of
    from trainer.data import HELDOUT_SEED
    from trainer.models import load_causal_lm
    from trainer.ranking import likelihood_fn, mean_scores, report
    from repirl.vllm_setup import vllm_available
    from trainer.rollouts import HFEngine, VLLMEngine, build_rollouts

    tok = AutoTokenizer.from_pretrained(policy)
    pcfg = load_policy_config(policy)
    enc = TrajectoryEncoder(tok, pcfg.prompt_template, pcfg.step_separator)
    task = ArithmeticTask()
    problems = task.sample(questions, seed=HELDOUT_SEED, prefix="heldout")
    model = load_causal_lm(policy).eval()
    use_vllm = engine == "vllm" or (engine == "auto" and vllm_available())
    eng = VLLMEngine(policy, seed) if use_vllm else HFEngine(model, tok.eos_token_id)
    gens = eng.generate([enc.prompt_ids(p.question) for p in problems], n, temperature, 1.0, max_new_tokens, seed)
    rollouts = build_rollouts(problems, gens, enc, tok, task, tok.eos_token_id)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = [batch_of(rollouts[i : i + 64], pad) for i in range(0, len(rollouts), 64)]
    groups, labels = [r.group for r in rollouts], [r.correct for r in rollouts]

    majority = sum(
        answers_match(majority_answer([extract_answer(s.steps[-1]) if s.steps else None
                                       for s in rollouts[g * n : (g + 1) * n]]), p.answer)
        for g, p in enumerate(problems)) / len(problems)
    results = {"questions": len(problems), "n": n, "engine": eng.name, "majority_of_n": majority}
    with torch.no_grad():
        results["likelihood"] = report(groups, mean_scores(likelihood_fn(model), batches), labels)
        for d in prm:
            results[str(d)] = report(groups, mean_scores(_load_prm_scorer(d), batches), labels)
    typer.echo(json.dumps(results, indent=2))
    if out is not None:
        out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    typer.run(compare)
