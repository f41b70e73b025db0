"""`repirl serve --prm DIR` on hub folders as downloaded (no prm.json): served in their family's layout, said in one
line at start; a folder that cannot tell its format is refused before anything starts, naming what is missing."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from repirl.scoring.hub_replicas import build_replica
from repirl.scoring.loader import load_scorer
from tests.server.conftest import REPO, ServerProc

ITEM = {"question": "Start with 9. Multiply by 4, then subtract 2. What is the result?",
        "steps": ["9*4=36", "36-2=34", "Answer: 34"]}
FAMILIES = ("qwen-prm", "math-shepherd", "rlhflow")


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_serve")
    folders = {f: build_replica(f, root) for f in FAMILIES}
    log = root / "server.log"
    srv = ServerProc(["--engine", "hf", *[a for f, p in folders.items() for a in ("--prm", f"{f}={p}")]],
                     log=log).wait_ready()
    yield srv, folders, log
    srv.stop()


def test_served_without_prm_json(hub_server):
    srv, folders, log = hub_server
    models = {m["id"]: m for m in httpx.get(srv.url + "/v1/models").json()["data"]}
    assert models["qwen-prm"]["format"] == "qwen-step-tag" and models["rlhflow"]["format"] == "math-shepherd"
    text = log.read_text()
    for family, folder in folders.items():
        assert f"serving it as {family}" in text  # the one line saying what was chosen and why
        got = httpx.post(srv.url + "/v1/score", json={**ITEM, "model": family}).json()
        # in-process scorer on the same folder: tests/repirl/test_hub_families.py checks it against each card's code
        want = load_scorer(folder, engine="hf").score([(ITEM["question"], ITEM["steps"])])[0].step_rewards
        assert got["data"][0]["step_rewards"] == pytest.approx(want, abs=1e-5), family


def test_undecidable_folder_is_refused(tmp_path):
    folder = build_replica("math-shepherd", tmp_path).rename(tmp_path / "mistral-7b-sft")
    r = subprocess.run([sys.executable, "-m", "server", "--engine", "hf", "--prm", str(folder)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "cannot serve PRM" in r.stderr and "--family" in r.stderr and "'format'" in r.stderr


@pytest.mark.slow
def test_qwen_prm_replica_vllm_matches_hf(tmp_path):
    """vLLM's Qwen2ForProcessRewardModel (pooling, token_classify) on the detected config, against transformers."""
    pytest.importorskip("vllm")
    from tests.conftest import assert_vllm_matches_hf

    folder = build_replica("qwen-prm", tmp_path)
    assert_vllm_matches_hf(folder, [(ITEM["question"], ITEM["steps"]), ("What is 2+3?", ["2+3=6", "Answer: 6"])])
