"""`repirl-client` (the console script installed from clients/python) against the real service."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from repirl.policy.toy import TOY_QUESTION
from tests.clients.conftest import API_KEY


def cli(url, *args, key=API_KEY, stdin=None):
    exe = shutil.which("repirl-client", path=str(Path(sys.executable).parent)) or "repirl-client"
    env = {**os.environ, "REPIRL_BASE_URL": url}
    if key:
        env["REPIRL_API_KEY"] = key
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60, input=stdin)


def test_help_explains_every_command():
    out = cli("http://unused", "--help")
    assert out.returncode == 0
    for word in ("score", "rerank", "search", "models", "health", "REPIRL_BASE_URL", "REPIRL_API_KEY", "--stream"):
        assert word in out.stdout
    sub = cli("http://unused", "search", "--help")
    assert "--beam-width" in sub.stdout and "one JSON line per search step" in sub.stdout


def test_score_rerank_search_print_json(sdk_service, tmp_path):
    steps = tmp_path / "steps.txt"
    steps.write_text("3+4=7\n7*2=14\nAnswer: 14\n")
    one = cli(sdk_service.url, "score", "--question", TOY_QUESTION, "--steps-file", str(steps), "--aggregation", "min")
    assert one.returncode == 0, one.stderr
    got = json.loads(one.stdout)
    assert got["object"] == "score" and len(got["data"][0]["step_rewards"]) == 3
    assert got["data"][0]["score"] == pytest.approx(min(got["data"][0]["step_rewards"]))
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps({"question": TOY_QUESTION, "steps": s}) for s in (["3+4=7"], ["3+4=8"])))
    batch = json.loads(cli(sdk_service.url, "score", "--items-file", str(items)).stdout)
    assert [d["index"] for d in batch["data"]] == [0, 1]
    rr = cli(sdk_service.url, "rerank", "--question", TOY_QUESTION, "--candidate", "3+4=7\n\nAnswer: 7",
             "--candidate", "3+4=8\n\nAnswer: 8", "--voting", "majority")
    assert rr.returncode == 0 and sorted(json.loads(rr.stdout)["ranking"]) == [0, 1]
    st = cli(sdk_service.url, "search", "--question", TOY_QUESTION, "--strategy", "beam", "--n", "4",
             "--beam-width", "2", "--seed", "0", "--stream")
    assert st.returncode == 0, st.stderr
    lines = [json.loads(x) for x in st.stdout.splitlines()]
    assert [x["type"] for x in lines[:-1]] == ["step"] * (len(lines) - 1) and lines[-1]["type"] == "result"
    assert lines[-1]["result"]["answer"] in {"14", "16"}


def test_errors_exit_non_zero_with_the_service_error(sdk_service):
    out = cli(sdk_service.url, "models", key="wrong")
    assert out.returncode == 1 and out.stdout == ""
    err = json.loads(out.stderr)
    assert err["status"] == 401 and err["error"]["type"] == "unauthorized" and err["request_id"].startswith("req_")
    down = cli("http://127.0.0.1:9", "--max-retries", "0", "health")
    assert down.returncode == 3 and json.loads(down.stderr)["error"]["type"] == "connection_error"
