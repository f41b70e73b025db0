"""The same PRM in transformers and in vLLM's pooling runner gives the same token rewards (a real vLLM engine)."""

import pytest

pytest.importorskip("vllm", reason="vLLM is part of the CPU stack that `make test` installs")


@pytest.mark.slow
def test_token_rewards_match_transformers(tiny_prm_dir):
    import random

    import torch
    from transformers import AutoModelForTokenClassification
    from vllm import PoolingParams

    from repirl.vllm_setup import start_llm

    # A random head, so the rewards are far from zero and differ per token.
    prm = AutoModelForTokenClassification.from_pretrained(tiny_prm_dir).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(0, 256) for _ in range(rng.randint(5, 120))] for _ in range(6)]
    with torch.no_grad():
        expected = [prm(input_ids=torch.tensor([p])).logits[0, :, 0].tolist() for p in prompts]

    llm = start_llm(tiny_prm_dir, "the parity PRM", runner="pooling", dtype="float32", enforce_eager=True,
                    max_model_len=256)
    try:
        outs = llm.encode([{"prompt_token_ids": p} for p in prompts], pooling_task="token_classify",
                          pooling_params=PoolingParams(use_activation=False), use_tqdm=False)
    finally:
        del llm
    for p, exp, out in zip(prompts, expected, outs):
        got = out.outputs.data.reshape(-1).tolist()
        assert len(got) == len(p)
        assert max(abs(a - b) for a, b in zip(got, exp)) < 1e-4
    assert max(abs(x) for e in expected for x in e) > 1e-3  # the comparison is not between zeros
