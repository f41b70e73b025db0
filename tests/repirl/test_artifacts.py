import json
import os

import pytest

from repirl.artifacts import (ArtifactError, PRMConfig, atomic_dir, check_model_folder, content_hash,
                              load_policy_config, load_prm_config, save_model_folder)


def test_prm_folder_has_prm_json_with_revision(tiny_prm_dir, tiny_policy_dir):
    cfg = load_prm_config(tiny_prm_dir)
    assert cfg.format == "token-reward" and cfg.default_aggregation == "mean-token"
    assert cfg.revision == content_hash(tiny_prm_dir) and len(cfg.revision) == 16
    assert cfg.provenance.algorithm == "init" and cfg.provenance.base_model == str(tiny_policy_dir)
    assert cfg.step_separator == load_policy_config(tiny_policy_dir).step_separator
    model_cfg = json.loads((tiny_prm_dir / "config.json").read_text())
    assert model_cfg["architectures"] == ["Qwen2ForTokenClassification"] and len(model_cfg["id2label"]) == 1


def test_prm_loads_in_transformers_with_the_policy_body(tiny_prm_dir, tiny_policy_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    prm = AutoModelForTokenClassification.from_pretrained(tiny_prm_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    assert torch.equal(prm.model.layers[0].mlp.up_proj.weight, policy.model.layers[0].mlp.up_proj.weight)
    out = prm(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, 1) and out.abs().sum() > 0  # fresh head: small, non-constant rewards


def test_revision_changes_with_weights(tmp_path, tiny_prm_dir):
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(tiny_prm_dir)
    tok = AutoTokenizer.from_pretrained(tiny_prm_dir)
    cfg = load_prm_config(tiny_prm_dir)
    with torch.no_grad():
        model.score.weight.add_(1.0)
    out = save_model_folder(model, tok, tmp_path / "prm2", cfg)
    assert load_prm_config(out).revision != cfg.revision


@pytest.mark.parametrize("field, value", [
    ("beta", 0.5), ("positive_token", "+"), ("negative_token", "-"), ("step_tag", "<tag>"),
    ("reference_model", "other-reference"), ("step_reward", "min"), ("step_separator", "\n"), ("format", "implicit"),
    ("prompt_template", {"kind": "plain", "template": "Q: {question}\nA:"}),
])
def test_scoring_revision_covers_every_field_that_changes_a_score(tiny_prm_dir, field, value):
    """Issue 22.8: cached scores are keyed by this revision, so any prm.json field that changes a score changes it;
    provenance, the aggregation and the calibration (applied after the cache) leave it alone."""
    from repirl.artifacts import PRMConfig, scoring_revision
    from repirl.calibration import Calibration

    cfg = load_prm_config(tiny_prm_dir)
    changed = PRMConfig.model_validate({**cfg.model_dump(), field: value})
    assert scoring_revision(changed) != scoring_revision(cfg)
    same = cfg.model_copy(update={"default_aggregation": "min", "provenance": cfg.provenance.model_copy(
        update={"iterations": 99}), "calibration": Calibration(a=2.0, b=0.1, revision=scoring_revision(cfg))})
    assert scoring_revision(same) == scoring_revision(cfg)
    assert scoring_revision(cfg.model_copy(update={"revision": "0" * 16})) != scoring_revision(cfg)  # the weights


def test_atomic_dir_keeps_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "art"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise RuntimeError("killed mid-write")
    assert (target / "a.txt").read_text() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["art"]  # no temp folder left behind
    with atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(os.listdir(target)) == ["b.txt"] and sorted(os.listdir(tmp_path)) == ["art"]


def test_bad_artifacts_name_the_path(tmp_path, tiny_prm_dir):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_prm_config(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"empty/prm\.json is missing"):
        load_prm_config(tmp_path / "empty")
    with pytest.raises(ArtifactError, match=r"config\.json is missing"):
        check_model_folder(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "prm.json").write_text(json.dumps({"format": "nonsense"}))
    with pytest.raises(ArtifactError, match=r"bad/prm\.json: field 'format'"):
        load_prm_config(bad)
    (bad / "prm.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable"):
        load_prm_config(bad)
    assert PRMConfig().schema_version == 1
