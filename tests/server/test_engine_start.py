"""How `repirl serve` starts its engines (server/app.py `build_engines`): the PRMs and the policy side by side, and
nothing left running when one of them fails.

The engines here are stand-ins that record their calls: what is under test is the order and the clean-up, and a
real failing vLLM start costs half a minute. The real engines start through the same function in every service test
(`python -m server`: tests/server/conftest.py `vllm_server` starts a vLLM PRM and a vLLM policy with it)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from repirl.scoring.tiny_prms import build_tiny_prm
from server import app as server_app
from server.settings import load_settings


class Engine:
    """A started engine as build_engines sees it: what `_build_scorers` reads of a scorer, and `close`."""

    def __init__(self, name: str):
        self.name, self.closed, self.revision = name, 0, "r"
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


def test_the_prms_and_the_policy_start_side_by_side(prm_dirs, monkeypatch):
    """Each stand-in waits until the other has begun: one after the other, the first would wait in vain."""
    began = {"prms": threading.Event(), "policy": threading.Event()}

    def start(mine: str, other: str, result):
        began[mine].set()
        assert began[other].wait(10), f"{mine} started alone: {other} had not begun"
        return result

    monkeypatch.setattr(server_app, "build_scorers", lambda s: start("prms", "policy", {"a": Engine("a")}))
    monkeypatch.setattr(server_app, "load_policies", lambda s: start("policy", "prms", {"policy": Engine("p")}))
    scorers, policies = server_app.build_engines(_settings(prm_dirs))
    assert list(scorers) == ["a"] and list(policies) == ["policy"]


@pytest.mark.parametrize("failing", ["policy", "prms"])
def test_when_one_side_fails_the_other_sides_engines_are_closed(prm_dirs, monkeypatch, failing):
    built = {"a": Engine("a"), "b": Engine("b"), "policy": Engine("policy")}

    def side(name: str, result: dict):
        def run(settings):
            if name == failing:
                raise RuntimeError(f"{name} did not start")
            return result
        return run

    monkeypatch.setattr(server_app, "build_scorers", side("prms", {"a": built["a"], "b": built["b"]}))
    monkeypatch.setattr(server_app, "load_policies", side("policy", {"policy": built["policy"]}))
    with pytest.raises(RuntimeError, match=f"{failing} did not start"):
        server_app.build_engines(_settings(prm_dirs))
    survivors = ["policy"] if failing == "prms" else ["a", "b"]
    assert {name: e.closed for name, e in built.items()} == {name: int(name in survivors) for name in built}


def test_a_prm_that_fails_closes_the_prms_started_before_it(prm_dirs, monkeypatch):
    """Before, build_engines closed the PRMs only when the policy failed: a second PRM failing left the first one's
    engine running (for a vLLM PRM, its engine-core processes) until the interpreter exited."""
    first = Engine("a")

    def load_scorer(path, name, **kwargs):
        if name == "b":
            raise RuntimeError("PRM b did not start")
        return first

    monkeypatch.setattr(server_app, "load_scorer", load_scorer)
    with pytest.raises(RuntimeError, match="PRM b did not start"):
        server_app.build_engines(_settings(prm_dirs, policy=False))
    assert first.closed == 1
