"""`algorithm: offline`: learn a PRM from rollouts users already have, with no policy updates.

Experts: each question's reference solution plus its correct candidates. Negatives: its failed candidates, weighted by
w = exp(sum token rewards) / pi(candidate) when the data carries the sampling log-prob (`logprob` in the JSONL
format), uniformly otherwise (a batch mixing both uses uniform weights). Held-out questions measure the ranking
(AUC, best-of-N) before and after training, next to the base policy's own likelihood.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from repirl.artifacts import PolicyConfig, Provenance, atomic_write_text
from repirl.tasks.base import Problem
from repirl.trajectory import TrajectoryEncoder, split_steps
from trainer.algorithms import batch_of, irl_prm_step
from trainer.harness import initial_policy_dir, load_tokens, make_algorithm
from trainer.metrics import append_row, plot
from trainer.models import load_causal_lm
from trainer.ranking import likelihood_fn, mean_scores, report
from trainer.rollouts import Rollout, response_ids
from trainer.summary import RunSummary


@dataclass
class Candidate:
    steps: list[str]
    correct: bool
    logprob: float | None
    token_logprobs: list[float] | None = None
    token_ids: list[int] | None = None  # the sampled response ids (+ EOS when it finished)


def load_offline_data(cfg, sep: str) -> list[tuple[Problem | None, str, list[Candidate]]]:
    """(reference problem or None, question, candidates) per question."""
    o = cfg.offline
    if o.source == "gsm8k":
        from repirl.tasks.gsm8k import load_model_solutions

        return [(p, p.question, [Candidate(c.steps, c.is_correct, None) for c in cands])
                for p, cands in load_model_solutions(limit=o.limit)]
    from repirl.tasks.jsonl import read_records

    out = []
    for lineno, rec in read_records(o.path):
        steps = rec.reference_steps(sep)
        ref = Problem(rec.id or str(lineno), rec.question, steps, rec.answer or "") if steps else None
        cands = [Candidate(c.steps if c.steps is not None else split_steps(c.solution, sep), c.correct, c.logprob,
                           c.token_logprobs, c.token_ids) for c in rec.candidates]
        out.append((ref, rec.question, cands))
        if o.limit is not None and len(out) >= o.limit:
            break
    return out


def _traj(encoder: TrajectoryEncoder, question: str, steps, group: int, correct: bool, eos: int, max_tokens: int,
          is_reference: bool = False, sampled: list[int] | None = None, trailing_sep: bool = True) -> Rollout | None:
    """A candidate or reference as the policy produced it (issue 24, cause 2): prompt + its sampled ids when the data
    has them (`sampled`, EOS included if it finished), else the text as a policy writes it (trainer.rollouts
    `response_ids`: one tokenization, `trailing_sep` as the candidates end) + EOS; cut at `max_tokens`."""
    prompt = encoder.prompt_ids(question)
    if len(prompt) >= max_tokens - 1:
        return None
    if sampled is not None:
        finished = bool(sampled) and sampled[-1] == eos
        body, tail = list(sampled[:-1] if finished else sampled), [eos] if finished else []
    else:
        body, tail = response_ids(encoder, steps, trailing_sep), [eos]
    ids = (prompt + body + tail)[:max_tokens]
    return Rollout(None, group, list(steps), ids, len(prompt), min(len(prompt) + len(body), max_tokens), correct,
                   is_reference=is_reference, meta={"step_tokens": len(body)})


def candidate_logprob(c: Candidate, r: Rollout) -> float | None:
    """log pi(candidate) over the SAME tokens its rewards cover: the step tokens kept within offline.max_tokens
    (the weight is exp(sum of those tokens' rewards) / pi of those tokens). From `token_logprobs` only when the
    candidate's `token_ids` ARE the trajectory's tokens (compared id by id: a count that happens to match says nothing
    about which tokens the values belong to); else `logprob` when nothing was cut; else None (unknown over the kept
    tokens, so its batch uses uniform weights)."""
    kept, full = r.step_end - r.prompt_len, r.meta["step_tokens"]
    if c.token_logprobs is not None and c.token_ids is not None and \
            list(c.token_ids[:kept]) == r.ids[r.prompt_len : r.step_end]:
        return float(sum(c.token_logprobs[:kept]))
    return c.logprob if kept == full else None


def candidates_end_with_separator(data, tok, sep: str, eos: int) -> bool:
    """Whether the sampled candidates (those with `token_ids`) end with the separator before EOS, as
    trainer.rollouts.ends_with_separator decides for the online loop; True when none has ids."""
    votes = [tok.decode(c.token_ids[:-1]).endswith(sep) for _, _, cs in data for c in cs
             if c.token_ids and c.token_ids[-1] == eos]
    return sum(votes) * 2 >= len(votes) if votes else True


def run_offline(cfg, resume: bool = False, console=None) -> dict:
    say = console.print if console is not None else print
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    import yaml

    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    # the same set-up and export as the online loop (trainer/harness.py)
    algo = make_algorithm(cfg)
    init_dir = initial_policy_dir(cfg, run_dir)
    torch.manual_seed(cfg.seed)
    tokens = load_tokens(init_dir, cfg.prompt_template)
    tok, pol_cfg, enc = tokens.tokenizer, tokens.policy_cfg, tokens.encoder
    eos, o = tok.eos_token_id, cfg.offline

    data = load_offline_data(cfg, pol_cfg.step_separator)
    order = list(range(len(data)))
    random.Random(cfg.seed).shuffle(order)
    n_hold = int(len(data) * o.holdout_fraction)
    hold, train = [data[i] for i in order[:n_hold]], [data[i] for i in order[n_hold:]]
    say(f"offline PRM: {len(train)} training questions, {len(hold)} held out, source {o.source}")

    prm = algo.build_prm(init_dir)
    prm.remember_start(cfg.prm.init_l2)
    opt = torch.optim.AdamW(prm.parameters(), lr=cfg.prm.lr, weight_decay=0.0)
    tail = candidates_end_with_separator(data, tok, pol_cfg.step_separator, eos)  # references end as samples do
    hold_items = [(g, _traj(enc, q, c.steps, g, c.correct, eos, o.max_tokens, sampled=c.token_ids, trailing_sep=tail))
                  for g, (_, q, cs) in enumerate(hold) for c in cs]
    hold_items = [(g, r) for g, r in hold_items if r is not None]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    hold_batches = [batch_of([r for _, r in hold_items[i : i + 32]], pad) for i in range(0, len(hold_items), 32)]
    groups, labels = [g for g, _ in hold_items], [r.correct for _, r in hold_items]

    def evaluate(tag: str) -> dict:
        prm.eval()
        rep = report(groups, mean_scores(prm.token_rewards, hold_batches), labels)
        prm.train()
        return {f"{tag}_{k}": v for k, v in rep.items()}

    base = load_causal_lm(init_dir).eval()
    baseline = {f"likelihood_{k}": v for k, v in report(groups, mean_scores(likelihood_fn(base), hold_batches),
                                                         labels).items()}
    del base
    before = evaluate("prm_before")
    say(f"held out: policy likelihood {baseline}; PRM before {before}")

    step, t0 = 0, time.time()
    for epoch in range(o.epochs):
        ep_order = list(range(len(train)))
        random.Random(cfg.seed * 31 + epoch).shuffle(ep_order)
        for start in range(0, len(ep_order), o.batch_questions):
            experts, negatives, neg_lp = [], [], []
            for g in ep_order[start : start + o.batch_questions]:
                ref, q, cands = train[g]
                if ref is not None and cfg.prm.expert_references:
                    experts.append(_traj(enc, q, ref.steps, g, True, eos, o.max_tokens, is_reference=True,
                                         trailing_sep=tail))
                for c in cands:
                    r = _traj(enc, q, c.steps, g, c.correct, eos, o.max_tokens, sampled=c.token_ids, trailing_sep=tail)
                    (experts if c.correct else negatives).append(r)
                    if not c.correct:
                        neg_lp.append(candidate_logprob(c, r) if r is not None else None)
            keep = [i for i, r in enumerate(negatives) if r is not None]
            negatives, neg_lp = [negatives[i] for i in keep], [neg_lp[i] for i in keep]
            experts = [r for r in experts if r is not None]
            lp = torch.tensor(neg_lp) if neg_lp and all(x is not None for x in neg_lp) else None
            m = irl_prm_step(prm, opt, experts, negatives, lp, cfg.prm, pad, cfg.prm.updates_per_iter)
            append_row(run_dir / "metrics.jsonl", {"iter": step, "epoch": epoch, "weights": "logprob" if lp is not None
                                                   else "uniform", **m, "t_elapsed": round(time.time() - t0, 2)})
            step += 1
    after = evaluate("prm_after")
    say(f"held out: PRM after {after}")
    prov = Provenance(algorithm="offline", base_model=str(init_dir), data=f"{o.source}:{o.path or 'model_solutions'}",
                      iterations=step, metrics={**baseline, **before, **after})
    algo.export(prm, prm.model, run_dir / "prm", tokens, PolicyConfig(step_separator=pol_cfg.step_separator,
                                                                       prompt_template=pol_cfg.prompt_template), prov)
    from trainer.metrics import read_rows

    plot(read_rows(run_dir / "metrics.jsonl"), run_dir / "plots")
    from trainer.calibration import calibrate_offline  # p_correct: prm.json `calibration`, held-out candidates

    calibrate_offline(run_dir / "prm", hold, cfg.calibration, say=say)
    summary = RunSummary(name=cfg.name, kind="offline", algorithm="offline", seed=cfg.seed, iterations=step,
                         train_seconds=round(time.time() - t0, 1), train_questions=len(train),
                         heldout_questions=len(hold), metrics={**baseline, **before, **after})
    summary.write(run_dir)
    return summary.model_dump()
