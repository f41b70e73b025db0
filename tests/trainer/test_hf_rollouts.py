"""trainer/rollouts.py HFEngine (rollouts without vLLM, issue 26): all rows decode in one generate call, and with
`replica_dtype` it samples from a bf16 replica whose weights follow the trainer's fp32 master weights at every
generate (checked by the sampler's own log-probs against the trainer's forward, before and after a weight change).
The replica path is what a one-process bf16 run on a GPU uses; here it runs on the CPU (same code, bf16 on the CPU)."""

import pytest
import torch

from trainer.models import collate, load_causal_lm, token_logprobs
from trainer.rollouts import HFEngine


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _worst_diff(model, prompt, gens, temperature):
    seqs = [prompt + ids for ids, _ in gens]
    lp = token_logprobs(model, collate(seqs, [len(prompt)] * len(seqs), [len(s) for s in seqs], 0),
                        temperature=temperature)
    return max(abs(a - b) for i, (ids, lps) in enumerate(gens)
               for a, b in zip(lp[i, len(prompt):len(prompt) + len(ids)].tolist(), lps))


def test_bf16_replica_follows_the_master_weights_and_decodes_in_one_call(tiny_policy_dir, monkeypatch):
    model = load_causal_lm(tiny_policy_dir).train()
    engine = HFEngine(model, eos_id=1, replica_dtype=torch.bfloat16)
    calls = []
    replica = engine.sampler()
    assert replica is not model and all(p.dtype == torch.bfloat16 for p in replica.parameters())
    real_generate = replica.generate
    monkeypatch.setattr(replica, "generate", lambda *a, **k: calls.append(k["input_ids"].shape[0]) or
                        real_generate(*a, **k))
    prompt = [5, 6, 7, 8, 9]
    gens = engine.generate([prompt] * 3, 40, 0.8, 1.0, 12, seed=1)  # 120 rows
    assert calls == [120]  # one decode for every row (it was chunks of 64: two decodes one after the other)
    assert model.training  # the trainer's model is left as it was
    before = _worst_diff(model, prompt, [g for grp in gens for g in grp][:8], 0.8)
    assert before < 0.1  # bf16 sampler vs the fp32 trainer: bf16 rounding only

    with torch.no_grad():  # an "update": the replica must sample with the new weights at the next generate
        model.get_output_embeddings().weight.mul_(3.0)
    gens2 = [g for grp in engine.generate([prompt], 8, 0.8, 1.0, 12, seed=2) for g in grp]
    after = _worst_diff(model, prompt, gens2, 0.8)
    stale = _worst_diff(load_causal_lm(tiny_policy_dir), prompt, gens2, 0.8)
    assert after < 0.1 < stale, (after, stale)


def test_without_replica_the_model_itself_samples(tiny_policy_dir):
    model = load_causal_lm(tiny_policy_dir)
    engine = HFEngine(model, eos_id=1)
    assert engine.sampler() is model
    gens = engine.generate([[5, 6, 7]], 4, 1.0, 1.0, 8, seed=0)[0]
    assert _worst_diff(model, [5, 6, 7], gens, 1.0) < 1e-4  # fp32 sampler = fp32 trainer
