"""Issue 24 cause 6: the PPO update's mini-batches. (1) A recipe that does not set `optim.mini_batch_size` gets
several optimizer steps per batch (it got one, so the ratio stayed 1 and the clip never acted); (2) the rows the
filters remove leave the batch before it is split (veRL's order), so the kept questions fill the mini-batches;
(3) epochs after the first reshuffle the rows, seeded."""

import copy

import pytest
import torch
import yaml

from trainer import algorithms
from trainer.algorithms import batch_of, policy_step
from trainer.config import PolicyTrainConfig, default_mini_batch_size, parse_config
from trainer.models import load_causal_lm, token_logprobs
from trainer.rollouts import Rollout


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rollouts(groups: int, n: int = 1):
    g = torch.Generator().manual_seed(0)
    out = []
    for grp in range(groups):
        for k in range(n):
            ids = torch.randint(0, 250, (10 + grp,), generator=g).tolist()  # row lengths tell the questions apart
            out.append(Rollout(None, grp, ["x"], ids, 4, len(ids) - 1, correct=k == 0))
    return out


def test_default_mini_batch_size_gives_several_steps():
    assert default_mini_batch_size(16) == 4  # 4 steps, the paper's 128 / 32
    assert default_mini_batch_size(128) == 32
    assert default_mini_batch_size(10) == 2  # a divisor: 5 equal steps
    assert default_mini_batch_size(3) == 1 and default_mini_batch_size(1) == 1
    assert default_mini_batch_size(4, world=2) == 2  # a multiple of the processes: an equal share per rank
    assert default_mini_batch_size(16, world=8) == 8


def test_a_recipe_without_mini_batch_size_trains_with_several_steps(recipe):
    from trainer.loop import Trainer

    cfg = parse_config(recipe(iterations=1, eval_problems=0, questions_per_iter=4))
    assert cfg.optim.mini_batch_size is None  # the recipe sets none
    trainer = Trainer(cfg)
    assert trainer.cfg.optim.mini_batch_size == 1  # 4 questions: four PPO steps (it was one: the clip never acted)
    assert yaml.safe_load((cfg.run_dir / "config.yaml").read_text())["optim"]["mini_batch_size"] == 1
    trainer.engine = trainer._make_engine()
    row = trainer.iteration(0)
    assert row["policy_steps"] == 4, row
    explicit = parse_config(recipe(questions_per_iter=4, optim={"mini_batch_size": 4}))
    assert Trainer(explicit).cfg.optim.mini_batch_size == 4  # a recipe may still ask for one step


def _step_and_weights(policy, batch, old, adv, cfg, n, **kw):
    model = copy.deepcopy(policy)
    out = policy_step(model, torch.optim.SGD(model.parameters(), lr=0.5), batch, old, adv, cfg, n=n,
                      temperature=0.8, **kw)
    return out, torch.cat([p.detach().flatten() for p in model.parameters()])


def test_filtered_rows_leave_before_the_batch_is_split(tiny_policy_dir):
    policy = load_causal_lm(tiny_policy_dir)
    rs = _rollouts(groups=4, n=2)
    b = batch_of(rs, 256)
    with torch.no_grad():
        old = token_logprobs(policy, b, temperature=0.8) - 0.1
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.8, -0.8, 0.3, -0.3])
    keep = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])  # questions 0 and 2 kept
    cfg = PolicyTrainConfig(mini_batch_size=2, grad_clip=1e9)  # 2 questions per mini-batch
    out, weights = _step_and_weights(policy, b, old, adv, cfg, 2, keep=keep)
    # the kept questions make one full mini-batch: one step, the same as a batch of only those rows
    kept = torch.tensor([0, 1, 4, 5])
    ref_out, ref_weights = _step_and_weights(policy, b.select(kept), old[kept][:, : b.select(kept).ids.shape[1]],
                                             adv[kept], cfg, 2)
    assert out["policy_steps"] == ref_out["policy_steps"] == 1
    assert torch.allclose(weights, ref_weights, atol=1e-6)


def test_ppo_epochs_reshuffle_the_rows_seeded(tiny_policy_dir, monkeypatch):
    policy = load_causal_lm(tiny_policy_dir)
    b = batch_of(_rollouts(groups=6), 256)
    with torch.no_grad():
        old = token_logprobs(policy, b, temperature=0.8)
    seen = []
    real = algorithms.token_logprobs

    def recording(model, batch, **kw):  # each mini-batch's rows, by length (every row has its own)
        seen.append(int(batch.attn.sum()))
        return real(model, batch, **kw)

    monkeypatch.setattr(algorithms, "token_logprobs", recording)
    cfg = PolicyTrainConfig(mini_batch_size=1, ppo_epochs=3)  # the optimizer below has lr 0

    def orders(seed):
        seen.clear()
        policy_step(policy, torch.optim.SGD(policy.parameters(), lr=0.0), b, old, torch.ones(6), cfg, n=1,
                    temperature=0.8, seed=seed)
        return seen[0:6], seen[6:12], seen[12:18]

    first, second, third = orders(seed=5)
    assert first == [10, 11, 12, 13, 14, 15]  # the first epoch: batch order
    assert sorted(second) == sorted(third) == first  # every row once per epoch
    assert second != first and third != second  # reshuffled between epochs
    assert orders(seed=5) == (first, second, third)  # seeded: the same iteration replays the same order
    assert orders(seed=6)[1:] != (second, third)
