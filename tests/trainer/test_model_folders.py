"""A real-style model folder as the policy: its own chat template, two EOS ids (generation_config.json lists
<|im_end|> and <|endoftext|>, as Qwen2.5-Instruct's does), no policy.json, and a prompt template from the recipe.
The folder comes from repirl.tiny.build_chat_model_folder, whose samples are a few letters ending with the SECOND EOS
id (its next-token distribution is fixed by construction)."""

import json

import pytest
import torch

from repirl.artifacts import eos_token_ids, load_policy_config, load_prm_config
from repirl.tiny import build_chat_model_folder
from trainer.config import parse_config
from trainer.harness import load_tokens
from trainer.rollouts import HFEngine, build_rollouts

from tests.trainer.conftest import small_recipe

SYSTEM = "Solve it step by step."


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return build_chat_model_folder(tmp_path_factory.mktemp("chat") / "policy")


def _recipe(tmp_path, folder, **over):
    """conftest's small recipe on the chat folder, prompting through its chat template."""
    return small_recipe(tmp_path, folder, **{
        "name": "chat", "questions_per_iter": 2, "eval_problems": 2,
        "prompt_template": {"kind": "chat", "system": SYSTEM},
        "task": {"train_size": 8, "eval_size": 2}, "rollouts": {"n": 2, "max_new_tokens": 24},
        "prm": {"lr": 1e-3}, "optim": {"lr": 1e-3}, "calibration": {"problems": 0}, **over})


def test_eos_ids_and_chat_prompt(chat_folder):
    folder, ids = chat_folder
    # the tokenizer's EOS first, then the generation config's other one
    assert eos_token_ids(folder, None) == [ids["first_eos"], ids["second_eos"]]
    cfg = parse_config(_recipe("/tmp", folder))
    tokens = load_tokens(folder, cfg.prompt_template)
    assert tokens.stop_ids == [ids["first_eos"], ids["second_eos"]] and tokens.eos_id == ids["first_eos"]
    # the prompt goes through the folder's chat template, with the recipe's system message
    want = tokens.tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": "What is 2+3?"}],
                                                add_generation_prompt=True, tokenize=False)
    assert want.startswith("<|im_start|>system\n" + SYSTEM) and want.endswith("<|im_start|>assistant\n")
    assert tokens.encoder.prompt_ids("What is 2+3?") == tokens.tokenizer.encode(want, add_special_tokens=False)
    # without the recipe's template: the folder has no policy.json, so the plain default
    plain = load_tokens(folder)
    assert tokens.tokenizer.decode(plain.encoder.prompt_ids("Q")) == "Question: Q\nSolution:\n"
    # a misspelt template key fails like any other recipe key
    with pytest.raises(Exception, match="prompt_template.sytem"):
        raw = _recipe("/tmp", folder)
        raw["prompt_template"] = {"kind": "chat", "sytem": SYSTEM}  # replaced whole, not merged into the default
        parse_config(raw)


def test_generation_stops_at_the_second_eos_id(chat_folder):
    from transformers import AutoModelForCausalLM

    folder, ids = chat_folder
    tokens = load_tokens(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    prompt = tokens.encoder.prompt_ids("Q")
    letters = set(ids["letter_ids"])
    gens = HFEngine(model, tokens.stop_ids, tokens.pad_id).generate([prompt], 16, 1.0, 1.0, 40, seed=3)[0]
    for row, lps in gens:
        assert row[-1] == ids["second_eos"] and set(row[:-1]) <= letters, row  # stopped at the second id, at once
        assert lps is not None and len(lps) == len(row) and all(lp <= 0 for lp in lps)
    assert any(len(row) > 1 for row, _ in gens)  # letters came first in some rows
    # the log-probs are the sampled distribution's: letters and the second EOS are equally likely (1/4 each)
    assert all(lp == pytest.approx(-1.3863, abs=1e-3) for _, lps in gens for lp in lps)
    rollouts = build_rollouts([_problem()], [gens], tokens.encoder, tokens.tokenizer, _Task(), tokens.stop_ids)
    assert all(r.step_end == len(r.ids) - 1 for r in rollouts)  # finished: the EOS is outside the step tokens

    # what stopping on the tokenizer's EOS alone does: the rows run past the second id to the token limit
    only_first = HFEngine(model, [ids["first_eos"]], tokens.pad_id).generate([prompt], 4, 1.0, 1.0, 40, seed=3)[0]
    assert all(len(row) == 40 and ids["second_eos"] in row[:-1] for row, _ in only_first)


def test_training_run_on_a_chat_folder(tmp_path, chat_folder):
    from trainer.train_cli import run_training

    folder, ids = chat_folder
    for param in ("logprob", "head"):  # the PRM is built from the folder in both forms
        raw = _recipe(tmp_path, folder, name=f"chat-{param}", prm={"lr": 1e-3, "parameterization": param})
        cfg = parse_config(raw)
        run_training(cfg)
        run = cfg.run_dir
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(r["mean_len"] < 24 for r in rows)  # stopped at the EOS, not the limit
        # the transformers sampler's log-probs equal the trainer's (per-iteration check without vLLM)
        assert all(r["logprob_max_abs_diff"] < 1e-4 for r in rows), rows
        pol = load_policy_config(run / "policy")
        assert pol.prompt_template.kind == "chat" and pol.prompt_template.system == SYSTEM
        prm = load_prm_config(run / "prm")
        assert prm.format == ("implicit" if param == "logprob" else "token-reward")
        assert prm.prompt_template.kind == "chat" and prm.prompt_template.system == SYSTEM
        gen = json.loads((run / "policy" / "generation_config.json").read_text())
        assert gen["eos_token_id"] == [ids["first_eos"], ids["second_eos"]]  # both EOS ids survive the export


# ------------------------------------------------------------------------------------------------------- helpers
def _problem():
    from repirl.tasks.base import Problem

    return Problem(id="q", question="Q", steps=["x"], answer="1")


class _Task:
    def check(self, problem, steps):
        from types import SimpleNamespace

        return SimpleNamespace(correct=False)
