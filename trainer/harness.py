"""One interface for every algorithm: rePIRL, RLOO, PRIME, test-time training and offline PRM learning.

The loop (trainer/loop.py) and offline mode (trainer/offline.py) never branch on the algorithm's name; they call
`make_algorithm(cfg)` and then:
  * `training_pool(train, heldout)`: the questions to train on (TTT: the unlabeled held-out ones);
  * `build_prm(init_dir)`: the PRM to train (None: outcome-only RLOO);
  * `score(batch, models)`: a scored rollout batch -> PRM update + rewards and advantages for the policy update;
  * `export(...)`: the PRM artifact.
Shared set-up (initial policy folder, tokenizer, trajectory encoder) is here too, so both modes use the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from repirl.trajectory import TrajectoryEncoder
from trainer import distributed as dist
from trainer.algorithms import (dense_advantages, format_reward, irl_prm_step, prime_prm_step, sequence_advantages)
from trainer.losses import masked_mean, masked_whiten, prime_advantages
from trainer.models import Batch, RewardModel, build_tiny_policy, policy_config_of
from trainer.rollouts import Rollout, ends_with_separator, reference_rollout


# ------------------------------------------------------------------------------------------------------- set-up
@dataclass
class Tokens:
    tokenizer: object
    encoder: TrajectoryEncoder
    policy_cfg: object  # repirl.artifacts.PolicyConfig of the initial policy
    eos_id: int
    pad_id: int
    eos_ids: list[int] | None = None  # every id that ends a generation (eos_id first); None: [eos_id]

    @property
    def stop_ids(self) -> list[int]:
        return self.eos_ids or [self.eos_id]


def initial_policy_dir(cfg, run_dir: Path) -> Path:
    """cfg.policy, or (policy: tiny) a random tiny Qwen2 built once in run_dir/init_policy by rank 0."""
    if cfg.policy != "tiny":
        return Path(cfg.policy)
    d = Path(run_dir) / "init_policy"
    if dist.rank() == 0 and not (d / "config.json").exists():
        build_tiny_policy(d, cfg.seed, cfg.tiny_layers)
    dist.barrier()
    return d


def load_tokens(init_dir: Path, prompt_template=None) -> Tokens:
    """The folder's tokenizer, its EOS ids (repirl.artifacts.eos_token_ids: generation_config.json may list several)
    and trajectory encoder. `prompt_template` (the recipe's) replaces the folder's policy.json template, and is what
    the run's exported policy.json / prm.json then carry."""
    from transformers import AutoTokenizer

    from repirl.artifacts import eos_token_ids
    from repirl.trajectory import PromptTemplate

    tok = AutoTokenizer.from_pretrained(init_dir)
    pcfg = policy_config_of(init_dir)
    if prompt_template is not None:
        pcfg = pcfg.model_copy(update={"prompt_template": PromptTemplate.model_validate(prompt_template.model_dump())})
    eos_ids = eos_token_ids(init_dir, tok)
    eos = eos_ids[0]
    return Tokens(tok, TrajectoryEncoder(tok, pcfg.prompt_template, pcfg.step_separator), pcfg, eos,
                  tok.pad_token_id if tok.pad_token_id is not None else eos, eos_ids)


# ------------------------------------------------------------------------------------------------ the interface
@dataclass
class RolloutBatch:
    """One iteration's rollouts (this rank's share), as the policy update will see them."""

    rollouts: list[Rollout]
    batch: Batch
    old_lp: torch.Tensor  # the policy's token log-probs at the rollout temperature, before the update
    correct: torch.Tensor  # [B] outcome labels
    keep: torch.Tensor  # [B] 1 for the rows the policy update uses (filters), 0 otherwise
    n: int  # rollouts per question (consecutive rows)


@dataclass
class Models:
    """What an algorithm's PRM update needs besides the batch."""

    prm: RewardModel | None
    opt: torch.optim.Optimizer | None
    reference: torch.nn.Module  # the frozen initial policy (PRIME's pi_ref)
    tokens: Tokens


@dataclass
class Scored:
    advantages: torch.Tensor  # [B] (sequence) or [B, T] (token) advantages
    rewards: torch.Tensor  # [B] sequence rewards (logged as reward_mean)
    metrics: dict


class Algorithm:
    name = ""

    def __init__(self, cfg):
        self.cfg = cfg

    def training_pool(self, train: list, heldout: list) -> list:
        return train

    def build_prm(self, init_dir: Path) -> RewardModel | None:
        return None

    def score(self, b: RolloutBatch, m: Models) -> Scored:
        raise NotImplementedError

    def export(self, prm: RewardModel, prm_model, out_dir: Path, tokens: Tokens, policy_cfg, provenance,
               reference=None) -> Path:
        """prm_model: what to save (dist.saveable(prm.model): full weights when sharded)."""
        return prm.export(out_dir, tokens.tokenizer, policy_cfg, provenance, model=prm_model)


class RLOO(Algorithm):
    """Outcome-only RLOO: no PRM."""

    name = "rloo"

    def score(self, b, m):
        return Scored(sequence_advantages(b.correct, b.n), b.correct, {})


class RePIRL(Algorithm):
    """The paper's IRL update of a token-reward PRM, then reward = outcome + lambda * mean token reward (or, with
    optim.dense, PRIME's combination of lambda-scaled token rewards)."""

    name = "repirl"
    frozen = False

    def build_prm(self, init_dir):
        c = self.cfg.prm
        return RewardModel(c.parameterization, c.init or init_dir, beta=c.beta, bound=c.reward_bound).train()

    def base_reward(self, b: RolloutBatch) -> torch.Tensor:
        return b.correct

    def prm_update(self, b: RolloutBatch, m: Models) -> dict:
        cfg, t, n = self.cfg, m.tokens, b.n
        rs = b.rollouts
        # references encoded as the policy writes: one tokenization of the text, ending as its samples end
        tail = ends_with_separator(rs, t.tokenizer, t.encoder.sep, dist.all_sum)
        refs = ([reference_rollout(r.problem, r.group, t.encoder, t.eos_id, tail) for r in rs[::n]]
                if cfg.prm.expert_references else [])
        experts = refs + [r for r in rs if r.correct]
        neg_idx = [i for i, r in enumerate(rs) if not r.correct]
        # importance-weight denominator: log pi_theta of the failed rollouts' step tokens, at the rollout temperature
        neg_logpi = (b.old_lp * b.batch.step_mask).sum(-1)[neg_idx] if neg_idx else torch.zeros(0)
        updates = 0 if (cfg.prm.frozen or self.frozen) else cfg.prm.updates_per_iter
        return irl_prm_step(m.prm, m.opt, experts, [rs[i] for i in neg_idx], neg_logpi, cfg.prm, t.pad_id, updates)

    def score(self, b, m):
        metrics = self.prm_update(b, m)
        token_r = m.prm.score(b.batch) * b.batch.step_mask  # eval mode: a scoring pass
        score = masked_mean(token_r, b.batch.step_mask)
        metrics["prm_score"] = dist.all_sum(float(score.sum())) / max(dist.all_sum(len(b.rollouts)), 1)
        base, o = self.base_reward(b), self.cfg.optim
        if o.dense:
            return Scored(dense_advantages(token_r, b.batch.resp_mask, base, b.n, o.prm_coef), base, metrics)
        rewards = base + o.prm_coef * score
        return Scored(sequence_advantages(rewards, b.n), rewards, metrics)


class TTT(RePIRL):
    """Test-time training: the PRM (prm.init) is frozen, the reward is a format reward + lambda * PRM score, and the
    training pool is the unlabeled held-out questions (labels only feed the logged accuracy)."""

    name = "ttt"
    frozen = True

    def training_pool(self, train, heldout):
        return heldout

    def base_reward(self, b):
        return torch.tensor([format_reward(r) for r in b.rollouts])


class Prime(Algorithm):
    """PRIME: implicit PRM beta * log(pi_phi / pi_ref) trained with BCE on outcomes; advantages = PRIME's
    compute_rloo_advantage_return, then masked_whiten over the kept response tokens of the whole batch."""

    name = "prime"

    def build_prm(self, init_dir):  # pi_phi starts as the policy; pi_ref is the frozen initial policy
        return RewardModel("logprob", init_dir, beta=1.0).train()

    def score(self, b, m):
        token_r, _, metrics = prime_prm_step(m.prm, m.reference, m.opt, b.rollouts, self.cfg.prime, self.cfg.prm,
                                             m.tokens.pad_id, int(dist.all_sum(len(b.rollouts))))
        mask = b.batch.resp_mask
        returns = prime_advantages(token_r, mask, b.correct, b.n)
        return Scored(masked_whiten(returns, mask * b.keep[:, None], dist.all_sum), b.correct, metrics)

    def export(self, prm, prm_model, out_dir, tokens, policy_cfg, provenance, reference=None):
        from repirl.artifacts import PRMConfig, save_implicit_prm

        # pi_phi in the folder, the frozen initial policy as pi_ref in `reference/`. A trajectory's score is the SUM
        # of its step rewards, beta * log(pi_phi(y) / pi_ref(y)): the logit the BCE trained (issue 24 cause 8; the
        # schema's mean-token divided it by the length, a score the loss never saw)
        return save_implicit_prm(prm_model, reference, tokens.tokenizer, out_dir, PRMConfig(
            format="implicit", beta=self.cfg.prime.beta, step_separator=policy_cfg.step_separator,
            prompt_template=policy_cfg.prompt_template, default_aggregation="sum", provenance=provenance))


class Offline(RePIRL):
    """Offline PRM learning (trainer/offline.py): rePIRL's PRM and export, over rollouts users already have."""

    name = "offline"


ALGORITHMS: dict[str, type[Algorithm]] = {a.name: a for a in (RePIRL, RLOO, Prime, TTT, Offline)}


def make_algorithm(cfg) -> Algorithm:
    return ALGORITHMS[cfg.algorithm](cfg)


def kept_rows(rollouts: Sequence[Rollout], n: int, filters) -> torch.Tensor:
    """[B] 1.0 for rows of questions the policy update keeps: accuracy in filters.accuracy_window, or (hard_only)
    no correct rollout; every row when no filter is set. The PRM update sees all rows."""
    keep = []
    for g in range(0, len(rollouts), n):
        acc = sum(r.correct for r in rollouts[g : g + n]) / n
        if filters.hard_only:
            ok = acc == 0
        elif filters.accuracy_window is not None:
            ok = filters.accuracy_window[0] <= acc <= filters.accuracy_window[1]
        else:
            ok = True
        keep += [float(ok)] * n
    return torch.tensor(keep)
