"""The tokenizer trap guard (ENVIRONMENT.md) and the tiny model shape vLLM accepts."""

import pytest

from repirl.tiny import build_tokenizer, tiny_qwen2_config

TEXT = "Question: Start with 13. Add 9, then multiply by 5.\nSolution:\n13+9=22\n\n22*5=110\n\nAnswer: 110\n\n  tabs\tüñí €"


def test_tokenizer_round_trips_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    tok = build_tokenizer()
    model = Qwen2ForCausalLM(tiny_qwen2_config(len(tok), num_layers=1, eos_token_id=tok.eos_token_id))
    model.save_pretrained(tmp_path)  # config.json says model_type qwen2: the trap's trigger
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert reloaded.encode(TEXT, add_special_tokens=False) == ids
    assert reloaded.decode(ids) == TEXT
    assert [reloaded.decode([i]) for i in reloaded.encode("1234", add_special_tokens=False)] == list("1234")
    assert reloaded.eos_token_id == tok.eos_token_id == 256


def test_tiny_config_keeps_head_dim_64():
    cfg = tiny_qwen2_config(259, hidden_size=256)
    assert cfg.head_dim == 64 and cfg.num_attention_heads == 4
    with pytest.raises(ValueError, match="multiple of head_dim"):
        tiny_qwen2_config(259, hidden_size=100)
