"""Hub PRM folders without prm.json: each family is detected and scored as its model card says.

The references below follow each card's own code (repirl/scoring/families.py cites them): the whole input built as the
card builds it, tokenized in one go, one forward, the value read where the card reads it. The replicas are tiny random
models with the family's architecture, special tokens and chat template (repirl/scoring/hub_replicas.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from repirl.artifacts import PRM_JSON, ArtifactError, load_prm_config
from repirl.scoring.families import QWEN_SYSTEM, detect_prm_config
from repirl.scoring.hub_replicas import build_replica
from repirl.scoring.loader import load_scorer

ITEMS = [("Start with 9. Multiply by 4, then subtract 2. What is the result?",
          ["Step 1: 9*4=36", "Step 2: 36-2=34", "Step 3: Answer: 34"]),  # " Step" is one token after the question
         ("What is 2+3?", ["2+3=6", "Answer: 6"])]


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    return {f: build_replica(f, root) for f in ("qwen-prm", "math-shepherd", "rlhflow", "eurus-implicit")}


def _ids(tok, text):
    return torch.tensor([tok.encode(text, add_special_tokens=False)])


def _served(folder, capsys, **kw):
    scorer = load_scorer(folder, engine="hf", kv_cache_tokens=0, **kw)
    line = capsys.readouterr().err
    return scorer, line


def test_qwen_prm_as_its_card(replicas, capsys):
    from repirl.scoring.formats import Qwen2ForProcessRewardModel

    scorer, line = _served(replicas["qwen-prm"], capsys)
    assert "qwen-prm" in line and "Qwen2ForProcessRewardModel" in line and "prm init" in line
    tok, model = scorer.tokenizer, Qwen2ForProcessRewardModel.from_pretrained(replicas["qwen-prm"])
    tag = tok.convert_tokens_to_ids("<extra_0>")
    for (q, steps), got in zip(ITEMS, scorer.score(ITEMS)):
        # the card: system prompt, user = query, assistant = "<extra_0>".join(steps) + "<extra_0>"
        text = tok.apply_chat_template([{"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": q},
                                        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"}],
                                       tokenize=False, add_generation_prompt=False)
        ids = _ids(tok, text)
        with torch.no_grad():
            probs = torch.softmax(model(ids).logits[0], -1)[:, 1]
        want = probs[ids[0] == tag].tolist()
        assert len(want) == len(steps)
        assert got.step_rewards == pytest.approx(want, abs=1e-5)


def test_math_shepherd_as_its_card(replicas, capsys):
    from transformers import AutoModelForCausalLM

    scorer, line = _served(replicas["math-shepherd"], capsys)
    assert "math-shepherd" in line
    tok, model = scorer.tokenizer, AutoModelForCausalLM.from_pretrained(replicas["math-shepherd"])
    plus, minus, tag = tok.encode("+")[-1], tok.encode("-")[-1], tok.encode("ки")[-1]
    for (q, steps), got in zip(ITEMS, scorer.score(ITEMS)):
        output = "\n".join(f"{s} ки" for s in steps)  # the card: "Step 1: ... ки\nStep 2: ... ки"
        ids = torch.tensor([tok.encode(f"{q} {output}")])
        with torch.no_grad():
            scores = model(ids).logits[0][:, [plus, minus]].softmax(-1)[:, 0]
        want = scores[ids[0] == tag].tolist()
        assert got.step_rewards == pytest.approx(want, abs=1e-5)


def test_rlhflow_as_its_card(replicas, capsys):
    from transformers import AutoModelForCausalLM

    scorer, line = _served(replicas["rlhflow"], capsys)
    assert "rlhflow" in line
    tok, model = scorer.tokenizer, AutoModelForCausalLM.from_pretrained(replicas["rlhflow"])
    cand = [tok.encode("+")[-1], tok.encode("-")[-1]]
    for (q, steps), got in zip(ITEMS, scorer.score(ITEMS)):
        want, conv = [], []
        for k, step in enumerate(steps):  # the card: one forward per step, P('+') from the logits at position -3
            conv += [{"role": "user", "content": q + " " + step if k == 0 else step},
                     {"role": "assistant", "content": "+"}]
            ids = _ids(tok, tok.apply_chat_template(conv, tokenize=False))
            with torch.no_grad():
                want.append(model(ids).logits[0, -3, cand].softmax(-1)[0].item())
        assert got.step_rewards == pytest.approx(want, abs=1e-5)


def test_eurus_implicit_cumulative(replicas, capsys):
    from transformers import AutoModelForCausalLM

    folder = replicas["eurus-implicit"]
    ref_dir = folder.parent / f"{folder.name}-reference"
    with pytest.raises(ArtifactError, match="reference_model"):
        load_scorer(folder, engine="hf")
    cfg = detect_prm_config(folder, reference_model=str(ref_dir)).config
    scorer = load_scorer(folder, engine="hf", config=cfg, kv_cache_tokens=0)
    tok = scorer.tokenizer
    phi, ref = AutoModelForCausalLM.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(ref_dir)
    for (q, steps), got in zip(ITEMS, scorer.score(ITEMS)):
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        n_prompt = len(tok.encode(prompt, add_special_tokens=False))
        ids = _ids(tok, prompt + "".join(s + "\n\n" for s in steps))
        with torch.no_grad():
            lp = [m(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0] for m in (phi, ref)]
        r = 0.001 * (lp[0] - lp[1])  # r_t = beta * log(pi/pi_ref) of token t+1
        cum = torch.cumsum(r[n_prompt - 1:], 0)  # q_t over the response tokens (the card's cumsum)
        ends = [len(tok.encode(prompt + "".join(s + "\n\n" for s in steps[:k + 1]), add_special_tokens=False))
                for k in range(len(steps))]
        want = [cum[e - n_prompt - 1].item() for e in ends]
        assert got.step_rewards == pytest.approx(want, rel=1e-4, abs=1e-9)
        assert got.step_rewards[-1] == pytest.approx(r[n_prompt - 1:].sum().item(), rel=1e-4, abs=1e-9)


def test_causal_lm_without_a_name_is_refused(tmp_path):
    folder = build_replica("math-shepherd", tmp_path)
    plain = folder.rename(tmp_path / "some-mistral-7b")
    with pytest.raises(ArtifactError, match=r"--family NAME.*'format'"):
        detect_prm_config(plain)
    assert detect_prm_config(plain, family="math-shepherd").family == "math-shepherd"


def test_missing_step_tag_names_the_key(tmp_path):
    folder = build_replica("qwen-prm", tmp_path)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok_json = json.loads((folder / "tokenizer.json").read_text())
    tok_json["added_tokens"] = [t for t in tok_json["added_tokens"] if t["content"] != "<extra_0>"]
    tok_json["model"]["vocab"].pop("<extra_0>", None)
    (folder / "tokenizer.json").write_text(json.dumps(tok_json))
    for key in ("added_tokens_decoder",):
        cfg.pop(key, None)
    cfg["extra_special_tokens"] = [t for t in cfg.get("extra_special_tokens", []) if t != "<extra_0>"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match=r"<extra_0>.*'step_tag'"):
        detect_prm_config(folder)


def test_prm_init_and_show(replicas, tmp_path):
    from typer.testing import CliRunner

    from repirl.cli import app

    folder = build_replica("rlhflow", tmp_path)
    r = CliRunner().invoke(app, ["prm", "show", str(folder)])
    assert r.exit_code == 0, r.output
    assert "rlhflow" in r.output and "no prm.json" in r.output and "before-tag" in r.output
    r = CliRunner().invoke(app, ["prm", "init", str(folder)])
    assert r.exit_code == 0, r.output
    written = load_prm_config(folder)
    assert written == detect_prm_config(folder).config.model_copy(update={"provenance": written.provenance})
    assert CliRunner().invoke(app, ["prm", "init", str(folder)]).exit_code == 1  # no silent overwrite
    assert CliRunner().invoke(app, ["prm", "init", str(folder), "--force", "--format", "math-shepherd"]).exit_code == 0
    r = CliRunner().invoke(app, ["prm", "show", str(folder)])
    assert r.exit_code == 0 and f"{PRM_JSON}" in r.output


def test_skywork_is_refused_with_the_reason(tmp_path):
    folder = build_replica("qwen-prm", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "architectures": ["Qwen2ForPrmModel"]}))
    with pytest.raises(ArtifactError, match="Skywork-o1-Open-PRM.*not served"):
        detect_prm_config(folder)


def test_new_field_keeps_existing_revisions():
    """read_at is hashed only when set: PRMs deployed before it keep their revision (and their cached rewards);
    the value below is what main computed before the field existed."""
    from repirl.artifacts import PRMConfig, scoring_revision

    cfg = PRMConfig(revision="abc", format="math-shepherd", step_tag="x", positive_token="+", negative_token="-")
    assert scoring_revision(cfg) == "fd2b8be2b79dce93"
    assert scoring_revision(cfg.model_copy(update={"read_at": "before-tag"})) != "fd2b8be2b79dce93"


@pytest.mark.parametrize("family", ["rlhflow", "eurus-implicit"])
def test_prefix_reuse_keeps_the_new_reading_rules(replicas, family):
    """The transformers engine resumes from a cached prefix's KV and token values: reading before the tag (RLHFlow)
    and the cumulative step reward (EurusPRM) must come out as from a cold forward."""
    folder = replicas[family]
    ref = folder.parent / f"{folder.name}-reference"
    cfg = detect_prm_config(folder, reference_model=str(ref) if family == "eurus-implicit" else None).config
    q, steps = ITEMS[0]
    cold = load_scorer(folder, engine="hf", config=cfg, kv_cache_tokens=0).score([(q, steps)])[0].step_rewards
    warm = load_scorer(folder, engine="hf", config=cfg)
    warm.score([(q, steps[:1])])
    got = warm.score([(q, steps)])[0]
    assert got.tokens_computed < got.tokens_total  # it did resume from the cached prefix
    assert got.step_rewards == pytest.approx(cold, rel=1e-4, abs=1e-9)  # a resumed forward: float32 noise ~1e-6
