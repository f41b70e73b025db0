"""Recipes: every shipped config validates; a bad key is named with its file."""

from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    cfg = load_config(path)
    assert cfg.name


def test_unknown_key_is_named_with_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nprm:\n  lr: 1.0e-5\n  learning_rate: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "prm.learning_rate" in str(e.value) and "unknown key" in str(e.value)


def test_bad_value_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nrollouts: {n: 1}\n")
    with pytest.raises(ConfigError, match=r"key 'rollouts.n'"):
        load_config(p)
    p.write_text("name: x\nfilters: {accuracy_window: [0.9, 0.2]}\n")
    with pytest.raises(ConfigError, match=r"filters.*accuracy_window must be"):
        load_config(p)


def test_invalid_yaml_and_cli_exit_code(tmp_path):
    from typer.testing import CliRunner

    from repirl.cli import app

    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)
    p.write_text("name: x\nalgoritm: repirl\n")
    res = CliRunner().invoke(app, ["train", "--config", str(p)])
    assert res.exit_code == 2
    assert "algoritm" in res.output
