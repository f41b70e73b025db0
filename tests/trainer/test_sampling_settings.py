"""Issue 24 cause 1: transformers rollouts must sample from the distribution the trainer's log-probs describe
(softmax(logits / T), top-p from the recipe), whatever the model folder's generation_config.json says. Qwen2.5-Instruct
ships repetition_penalty 1.05-1.1, top_k 20 and top_p 0.8; generate() applied them silently, so the sampled tokens
came from another distribution than the one the PPO ratio and the importance weights assume. The per-iteration
log-prob check (trainer/loop.py `_logprob_check`) is what shows it."""

import json
import shutil

import pytest
import torch

from trainer.loop import _logprob_check
from trainer.models import load_causal_lm
from trainer.rollouts import HFEngine, Rollout


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def penalised_policy_dir(tmp_path, tiny_policy_dir):
    """The tiny policy with an Instruct-style generation_config: a strong repetition penalty and a small top_k."""
    folder = tmp_path / "penalised"
    shutil.copytree(tiny_policy_dir, folder)
    gen_path = folder / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    gen.update(do_sample=True, repetition_penalty=1.3, top_k=5, temperature=0.3, top_p=0.5)
    gen_path.write_text(json.dumps(gen))
    return folder


def test_folder_generation_config_does_not_change_the_sampled_distribution(penalised_policy_dir):
    model = load_causal_lm(penalised_policy_dir).eval()
    assert model.generation_config.repetition_penalty == 1.3  # the folder's settings did load
    prompt = [5, 6, 7, 8, 9, 5, 6, 7]
    gens = HFEngine(model, eos_id=1).generate([prompt], 8, 0.8, 1.0, 16, seed=3)[0]
    rollouts = [Rollout(None, 0, ["x"], prompt + ids, len(prompt), len(prompt) + len(ids), False,
                        sampler_token_logprobs=lps) for ids, lps in gens]
    # the check the trainer logs every iteration: sampler log-probs vs its own forward at the rollout temperature
    assert _logprob_check(model, rollouts, 0, temperature=0.8, limit=8) < 1e-4
    # and the folder's top_k=5 is not applied either (it acts after the recorder, so the check above cannot see it):
    # the tiny random policy is near uniform over 259 tokens, so a sample from the full distribution rarely lands
    # in the top 5 (about 2%), and one restricted to the top 5 always does
    in_top5, total = 0, 0
    for i, r in enumerate(rollouts):
        for t in range(len(prompt), len(r.ids)):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([r.ids[:t]])).logits[0, -1]
            in_top5 += int(r.ids[t] in logits.topk(5).indices.tolist())
            total += 1
    assert in_top5 / total < 0.3, (in_top5, total)
