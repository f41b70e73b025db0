"""How `repirl serve` starts its engines (server/app.py `build_engines`): nothing left running when one of them
fails.

The engines here are stand-ins that count their closes: what is under test is the clean-up, and a real failing vLLM
start costs half a minute. The real engines start through the same function in every service test
(`python -m server`: tests/server/conftest.py `vllm_server` starts a vLLM PRM and a vLLM policy with it)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from repirl.scoring.tiny_prms import build_tiny_prm
from server import app as server_app
from server.settings import load_settings


class Engine:
    """A started engine as build_engines sees it: what `build_scorers` reads of a scorer, and `close`."""

    def __init__(self):
        self.closed, self.revision = 0, "r"
        self.encoder = SimpleNamespace(memo=SimpleNamespace(resize=lambda n: None))
        self.config = SimpleNamespace(format="token-reward")

    def close(self) -> None:
        self.closed += 1


@pytest.fixture(scope="module")
def prm_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_start")
    return [build_tiny_prm(root / name, "token-reward") for name in ("a", "b")]


def _settings(prm_dirs, policy: bool = True):
    return load_settings(None, prm=[f"a={prm_dirs[0]}", f"b={prm_dirs[1]}"], engine="hf",
                         policy=f"hf:{prm_dirs[0]}" if policy else None)


def test_a_policy_that_fails_closes_the_prms(prm_dirs, monkeypatch):
    prms = {"a": Engine(), "b": Engine()}

    def load_policies(settings):
        raise RuntimeError("the policy did not start")

    monkeypatch.setattr(server_app, "build_scorers", lambda settings: prms)
    monkeypatch.setattr(server_app, "load_policies", load_policies)
    with pytest.raises(RuntimeError, match="the policy did not start"):
        server_app.build_engines(_settings(prm_dirs))
    assert [e.closed for e in prms.values()] == [1, 1]


def test_a_prm_that_fails_closes_the_prms_started_before_it(prm_dirs, monkeypatch):
    """Before, build_engines closed the PRMs only when the policy failed: a second PRM failing left the first one's
    engine running (for a vLLM PRM, its engine-core processes) until the interpreter exited."""
    first = Engine()

    def load_scorer(path, name, **kwargs):
        if name == "b":
            raise RuntimeError("PRM b did not start")
        return first

    monkeypatch.setattr(server_app, "load_scorer", load_scorer)
    with pytest.raises(RuntimeError, match="PRM b did not start"):
        server_app.build_engines(_settings(prm_dirs, policy=False))
    assert first.closed == 1
