"""The same PRM in transformers and in vLLM's pooling runner gives the same token rewards (a real vLLM engine)."""

import pytest

pytest.importorskip("vllm", reason="vLLM is part of the CPU stack that `make test` installs")


@pytest.mark.slow
def test_token_rewards_match_transformers(tiny_prm_dir):
    import random

    import torch
    from transformers import AutoModelForTokenClassification
    from vllm import PoolingParams

    from repirl.vllm_setup import engine_core_in_process, start_llm

    # A random head, so the rewards are far from zero and differ per token.
    prm = AutoModelForTokenClassification.from_pretrained(tiny_prm_dir).eval()
    rng = random.Random(0)
    prompts = [[rng.randrange(0, 256) for _ in range(rng.randint(5, 120))] for _ in range(6)]
    with torch.no_grad():
        expected = [prm(input_ids=torch.tensor([p])).logits[0, :, 0].tolist() for p in prompts]

    import os

    import vllm.envs

    saved = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    with engine_core_in_process():  # the model code is the same in a spawned core (tests/conftest.py)
        llm = start_llm(tiny_prm_dir, "the parity PRM", runner="pooling", dtype="float32", enforce_eager=True,
                        max_model_len=256)
        assert vllm.envs._is_envs_cache_enabled()  # what the in-process core did: vllm.envs frozen at "0"
        if not torch.cuda.is_available():  # vLLM's CPU worker replaced torch.set_num_threads (its GPU worker does not)
            assert torch.set_num_threads is not set_threads
    # torch.set_num_threads works again after the build (before, every later call of the process was skipped with a
    # warning: a training run after it kept the thread count it found and computed other sums; test_resume failed)
    assert torch.set_num_threads is set_threads and torch.get_num_threads() == threads
    other = 1 if threads != 1 else 2
    try:
        torch.set_num_threads(other)
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(threads)
    # engines built after this one spawn their core again: the variable and vLLM's cache of it are restored (before,
    # the trainer's in-process rollouts restored the variable only, and every later engine of the process stayed in it)
    assert os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == saved
    assert vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING is (saved in (None, "1"))
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
