"""The trainer's numerics against references computed another way (issue 12): log-probs at the rollout temperature,
eval-mode scoring, trained ids == sampled ids, an acting PPO clip with per-mini-batch normalisation, PRIME's
whitening, offline weights over the rewarded tokens, one algorithm harness and one run summary."""

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from trainer.algorithms import batch_of, irl_prm_step, policy_step
from trainer.config import PolicyTrainConfig, PRMTrainConfig, parse_config
from trainer.losses import masked_whiten, ppo_clip_loss_sum
from trainer.models import RewardModel, collate, load_causal_lm, token_logprobs
from trainer.rollouts import Rollout


def _batch():
    seqs = [[10, 11, 12, 13, 14, 15, 16], [20, 21, 22, 23, 24, 25, 26]]
    return collate(seqs, [2, 2], [6, 6], pad_id=256)


def _rollouts(n_groups=2, n=2):
    g = torch.Generator().manual_seed(0)
    out = []
    for grp in range(n_groups):
        for k in range(n):
            ids = torch.randint(0, 250, (12 + k + grp,), generator=g).tolist()
            out.append(Rollout(None, grp, ["x"], ids, 4, len(ids) - 1, correct=k == 0))
    return out


# ------------------------------------------------------------------------------------------ 1. rollout temperature
def test_token_logprobs_at_the_rollout_temperature_by_hand(tiny_policy_dir):
    model = load_causal_lm(tiny_policy_dir).eval()
    b = _batch()
    with torch.no_grad():
        logits = model(input_ids=b.ids, attention_mask=b.attn).logits.double()
        lp = token_logprobs(model, b, temperature=0.8)
    for i in range(2):
        for t in range(1, 7):
            z = [float(v) / 0.8 for v in logits[i, t - 1]]
            m = max(z)
            want = z[int(b.ids[i, t])] - (m + math.log(sum(math.exp(v - m) for v in z)))
            assert float(lp[i, t]) == pytest.approx(want, abs=1e-5)
    with torch.no_grad():  # and not the T=1 value the trainer used before
        assert (token_logprobs(model, b) - lp)[:, 1:].abs().max() > 1e-3


def test_logprob_check_compares_at_the_rollout_temperature(tiny_policy_dir):
    from trainer.loop import _logprob_check

    model = load_causal_lm(tiny_policy_dir).eval()
    ids = [10, 11, 12, 13, 14, 15]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double() / 0.8
    processed = [float(torch.log_softmax(logits[t - 1], -1)[ids[t]]) for t in range(2, 6)]  # vLLM's processed lps
    r = Rollout(None, 0, ["x"], ids, 2, 6, False, sampler_token_logprobs=processed)
    assert _logprob_check(model, [r], 256, temperature=0.8) < 1e-5
    assert _logprob_check(model, [r], 256, temperature=1.0) > 1e-3


# --------------------------------------------------------------------------------------------- 2. eval-mode scoring
def test_head_prm_scoring_passes_are_identical(tiny_policy_dir):
    torch.manual_seed(0)
    prm = RewardModel("head", tiny_policy_dir).train()  # as the trainer builds it (dropout 0.1 in the head)
    b = _batch()
    a, c = prm.score(b), prm.score(b)
    assert torch.equal(a, c)
    assert prm.training  # the update's mode is restored
    with torch.no_grad():
        assert torch.equal(a, prm.eval().token_rewards(b))


def test_importance_weights_are_a_scoring_pass(tiny_policy_dir):
    torch.manual_seed(0)
    prm = RewardModel("head", tiny_policy_dir).train()
    rs = _rollouts(n_groups=2, n=3)
    experts, negatives = [r for r in rs if r.correct], [r for r in rs if not r.correct]
    lp = torch.tensor([-20.0, -35.0, -21.0, -33.0])
    runs = [irl_prm_step(prm, None, experts, negatives, lp, PRMTrainConfig(), 256, updates=0) for _ in range(2)]
    assert runs[0]["ess"] == runs[1]["ess"] and runs[0]["margin"] == runs[1]["margin"]


# ----------------------------------------------------------------------------------------- 3. sampled ids trained
def test_trained_ids_are_the_sampled_ids(tiny_tokenizer):
    from repirl.tasks.arithmetic import ArithmeticTask
    from repirl.trajectory import TrajectoryEncoder
    from trainer.rollouts import build_rollouts

    task = ArithmeticTask()
    p = task.sample(1, seed=0)[0]
    enc = TrajectoryEncoder(tiny_tokenizer)
    eos = tiny_tokenizer.eos_token_id
    body = tiny_tokenizer.encode("\n\n".join(p.steps), add_special_tokens=False)  # "...7" then EOS: no final SEP
    gens = [[(body + [eos], None), (body[:-2], None)]]  # finished; cut by max_new_tokens
    done, cut = build_rollouts([p], gens, enc, tiny_tokenizer, task, eos)
    prompt = enc.prompt_ids(p.question)
    assert done.ids == prompt + body + [eos] and done.step_end == len(prompt) + len(body) and done.correct
    assert cut.ids == prompt + body[:-2] and cut.step_end == len(cut.ids)
    b = batch_of([done, cut], 256)
    assert b.ids[0, : len(done.ids)].tolist() == done.ids
    assert b.resp_mask[0].sum() == len(body) + 1 and b.step_mask[0].sum() == len(body)


# --------------------------------------------------------------------------------------- 4. the PPO clip must act
def test_clip_fraction_on_a_batch_built_to_exceed_the_clip(tiny_policy_dir):
    policy = load_causal_lm(tiny_policy_dir)
    b = _batch()
    with torch.no_grad():
        lp = token_logprobs(policy, b, temperature=0.8)
    opt = torch.optim.SGD(policy.parameters(), lr=0.0)
    cfg = PolicyTrainConfig()
    out = policy_step(policy, opt, b, lp - 0.5, torch.tensor([1.0, 1.0]), cfg, n=1, temperature=0.8)
    assert out["clip_frac"] == 1.0  # ratio e^0.5 = 1.65 > 1.2 with A > 0: every token clipped
    out = policy_step(policy, opt, b, lp, torch.tensor([1.0, -1.0]), cfg, n=1, temperature=0.8)
    assert out["clip_frac"] == 0.0 and out["policy_steps"] == 1


def test_minibatches_step_several_times_each_normalised_by_its_own_tokens(tiny_policy_dir):
    policy = load_causal_lm(tiny_policy_dir)
    rs = _rollouts(n_groups=2, n=2)
    b = batch_of(rs, 256)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    with torch.no_grad():
        old = token_logprobs(policy, b, temperature=0.8) - 0.1
    grads = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            grads.append([p.grad.clone() for p in policy.parameters()])
            return super().step(closure)

    cfg = PolicyTrainConfig(mini_batch_size=1, grad_clip=1e9, entropy_coef=0.01)
    out = policy_step(policy, Recording(policy.parameters(), lr=0.0), b, old, adv, cfg, n=2, temperature=0.8)
    assert out["policy_steps"] == 2 and len(grads) == 2
    for k, rows in enumerate((slice(0, 2), slice(2, 4))):  # each mini-batch alone, by its own token count
        ref = copy.deepcopy(policy)
        mb = collate([r.ids for r in rs[rows]], [r.prompt_len for r in rs[rows]], [r.step_end for r in rs[rows]], 256)
        lp, ent = token_logprobs(ref, mb, with_entropy=True, temperature=0.8)
        width = mb.ids.shape[1]
        pg = ppo_clip_loss_sum(lp, old[rows, :width], adv[rows], mb.resp_mask)
        ((pg - 0.01 * (ent * mb.resp_mask).sum()) / mb.resp_mask.sum()).backward()
        for g, p in zip(grads[k], ref.parameters()):
            assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------- 5. PRIME and offline
def test_masked_whiten_by_hand():
    values = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    # entries 1, 2, 3: mean 2, unbiased variance ((-1)^2 + 0 + 1^2) / (3 - 1) = 1 -> (x - 2) / sqrt(1 + 1e-8)
    got = masked_whiten(values, mask)
    assert got.flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)


def test_prime_advantages_are_whitened_over_the_kept_tokens(tiny_policy_dir, tiny_tokenizer):
    from trainer.harness import Models, RolloutBatch, Tokens, make_algorithm
    from trainer.losses import prime_advantages

    cfg = parse_config({"name": "p", "algorithm": "prime", "prm": {"updates_per_iter": 0}})
    algo = make_algorithm(cfg)
    prm = algo.build_prm(tiny_policy_dir)
    rs = _rollouts(n_groups=2, n=2)
    b = batch_of(rs, 256)
    keep = torch.tensor([1.0, 1.0, 0.0, 0.0])
    correct = torch.tensor([float(r.correct) for r in rs])
    tokens = Tokens(tiny_tokenizer, None, None, tiny_tokenizer.eos_token_id, 256)
    ref = load_causal_lm(tiny_policy_dir).eval()
    scored = algo.score(RolloutBatch(rs, b, torch.zeros_like(b.resp_mask), correct, keep, 2),
                        Models(prm, None, ref, tokens))
    with torch.no_grad():  # by hand: PRIME's RLOO returns, then whitened over the kept rows' response tokens
        logratio = (token_logprobs(prm.model, b) - token_logprobs(ref, b)) * b.step_mask
        returns = prime_advantages(cfg.prime.beta * logratio, b.resp_mask, correct, 2)
    m = b.resp_mask * keep[:, None]
    x = returns[m > 0]
    want = (returns - x.mean()) / x.std(unbiased=True) * m
    assert torch.allclose(scored.advantages, want, atol=1e-5)


def test_offline_weight_logprob_covers_the_rewarded_tokens(tiny_tokenizer):
    from repirl.trajectory import TrajectoryEncoder
    from trainer.offline import Candidate, _traj, candidate_logprob

    enc, eos = TrajectoryEncoder(tiny_tokenizer), tiny_tokenizer.eos_token_id
    q, steps = "Start with 3. Add 4. What is the result?", ["3+4=7", "Answer: 7"]
    sampled = tiny_tokenizer.encode("3+4=7\n\nAnswer: 7\n\n", add_special_tokens=False) + [eos]  # steps + EOS
    n_steps = len(sampled) - 1
    tlp = [-0.1 * (i + 1) for i in range(n_steps + 1)]
    prompt_len = len(enc.prompt_ids(q))
    r = _traj(enc, q, steps, 0, False, eos, prompt_len + 5, sampled=sampled)
    assert r.step_end - r.prompt_len == 5  # rewards over the first 5 response tokens...
    assert candidate_logprob(Candidate(steps, False, sum(tlp), tlp, sampled), r) == pytest.approx(sum(tlp[:5]))  # ..pi
    assert candidate_logprob(Candidate(steps, False, sum(tlp)), r) is None  # a total over more tokens: unknown
    whole = _traj(enc, q, steps, 0, False, eos, 10_000)  # the text, as a policy writes it (SEP before EOS)
    assert whole.ids == enc.prompt_ids(q) + sampled
    assert candidate_logprob(Candidate(steps, False, -3.0), whole) == -3.0
    assert candidate_logprob(Candidate(steps, False, None, tlp, sampled), whole) == pytest.approx(sum(tlp[:n_steps]))


def test_recipes_compare_like_for_like():
    from trainer.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    cfgs = {name: load_config(root / f"{name}.yaml") for name in ("demo", "rloo", "prime")}
    assert {c.filters.accuracy_window for c in cfgs.values()} == {(0.2, 0.8)}
    assert {c.optim.mini_batch_size for c in cfgs.values()} == {4}
    assert PRMTrainConfig().grad_clip == 10.0  # the paper's PRM gradient clip


# ------------------------------------------------------------------------------- 6. one harness, one run summary
def test_every_algorithm_plugs_into_the_harness_and_the_loop_never_branches():
    from trainer.harness import ALGORITHMS

    assert set(ALGORITHMS) == {"repirl", "rloo", "prime", "ttt", "offline"}
    src = (Path(__file__).resolve().parents[2] / "trainer" / "loop.py").read_text()
    assert "algorithm ==" not in src and '"prime"' not in src and '"ttt"' not in src
    assert all(len(p.read_text().splitlines()) <= 400 for p in (Path(__file__).resolve().parents[2] / "trainer").glob("*.py"))


def test_evaluator_reads_the_run_summary(tmp_path):
    from trainer.evaluation.pipeline import run_summaries
    from trainer.summary import RunSummary

    run = tmp_path / "r"
    run.mkdir()
    RunSummary(name="r", kind="train", algorithm="rloo", seed=2, iterations=7, train_seconds=12.5, eval_problems=40,
               eval_temperature=0.7, eval_accuracy_before=0.4, eval_accuracy=0.45, eval_accuracy_greedy_before=0.465,
               eval_accuracy_greedy=0.405).write(run)
    got = run_summaries(SimpleNamespace(runs=[str(run)], prms={}, gsm8k_prm=None))
    assert got == [{"run": str(run), "algorithm": "rloo", "seed": 2, "iterations": 7, "train_seconds": 12.5,
                    "eval_problems": 40, "eval_temperature": 0.7, "accuracy_before": 0.4, "accuracy": 0.45,
                    "greedy_before": 0.465, "greedy": 0.405}]
    with pytest.raises(Exception):
        RunSummary(name="r", kind="train", algorithm="x", seed=0, iterations=1, train_seconds=1, total_time_s=3)


def test_heldout_seed_has_one_home():
    import trainer.bootstrap as bootstrap
    import trainer.evaluation.bestofn as bestofn
    from trainer.data import HELDOUT_SEED

    assert bestofn.HELDOUT_SEED is HELDOUT_SEED and bootstrap.BootstrapConfig().eval_seed == HELDOUT_SEED
    root = Path(__file__).resolve().parents[2] / "trainer"
    hits = [p for p in root.rglob("*.py") if any(s in p.read_text() for s in ("12345", "987654"))]
    assert [p.name for p in hits] == ["data.py"]


@pytest.mark.parametrize("update", ["after", "before"])
def test_prime_prm_steps_per_mini_batch_like_primes_update_rm(tiny_policy_dir, update):
    """PRIME's `update_rm` (veRL recipe/prime/prime_dp_rm.py: `batch.split(self.config.mini_batch_size)`, then one
    `_optimizer_step()` per mini-batch on its mean CE loss; its recipe, recipe/prime/config/prime_trainer.yaml, sets
    `reward_model.mini_batch_size: ${actor_rollout_ref.actor.ppo_mini_batch_size}` and `update: before`, which
    prime_ray_trainer.py follows with a second `compute_rm_score` on the updated PRM). Reference: plain SGD steps by
    hand, mini-batch after mini-batch, in batch order. Before PRM mini-batches, a run took one step per iteration."""
    from trainer.algorithms import prime_prm_step
    from trainer.config import PrimeConfig
    from trainer.losses import prime_ce_loss

    rs = _rollouts(n_groups=4, n=2)  # 4 questions, mini-batches of 2 questions: 2 steps of 4 rows
    b = batch_of(rs, 256)
    labels = torch.tensor([float(r.correct) for r in rs])
    ref = load_causal_lm(tiny_policy_dir).eval()
    prm = RewardModel("logprob", tiny_policy_dir).train()
    start = copy.deepcopy(prm.model.state_dict())
    cfg = PrimeConfig(beta=0.5, mini_batch_size=2, update=update)
    rewards, _, metrics = prime_prm_step(prm, ref, torch.optim.SGD(prm.parameters(), lr=0.5), rs, cfg,
                                         PRMTrainConfig(grad_clip=1e9), 256, len(rs))
    assert metrics["prm_steps"] == 2

    hand = RewardModel("logprob", tiny_policy_dir).train()
    hand.model.load_state_dict(start)
    opt = torch.optim.SGD(hand.parameters(), lr=0.5)
    with torch.no_grad():
        ref_lp = token_logprobs(ref, b)
    seen = []
    for rows in (slice(0, 4), slice(4, 8)):
        sub = b.rows(rows)
        width = sub.ids.shape[1]
        lr = (token_logprobs(hand.model, sub) - ref_lp[rows, :width]) * sub.step_mask
        seen.append(0.5 * lr.detach())
        prime_ce_loss(lr.sum(-1), labels[rows], 0.5).backward()
        opt.step()
        opt.zero_grad()
    for k, v in hand.model.state_dict().items():
        assert torch.allclose(prm.model.state_dict()[k], v, atol=1e-6), k
    moved = max(float((prm.model.state_dict()[k] - start[k]).abs().max()) for k in start)
    assert moved > 1e-3  # two real steps, not a no-op
    if update == "after":  # each mini-batch's rewards come from the forward pass before its step
        want = torch.zeros_like(rewards)
        want[0:4, :seen[0].shape[1]], want[4:8, :seen[1].shape[1]] = seen[0], seen[1]
    else:  # the updated PRM scores the whole batch again
        with torch.no_grad():
            want = 0.5 * (token_logprobs(hand.model, b) - ref_lp) * b.step_mask
    assert torch.allclose(rewards, want, atol=1e-5)
