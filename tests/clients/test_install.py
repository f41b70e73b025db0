"""clients/python installs on its own into a clean venv (no torch, no repirl): pip resolves only httpx and pydantic,
and the package, its adapters and its console script work there."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"


def test_installs_into_a_clean_venv_without_torch(tmp_path):
    src = tmp_path / "src"  # a copy: the build leaves build/ and *.egg-info where it runs, not in the checkout
    shutil.copytree(CLIENT, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # no ensurepip: this interpreter's pip installs into it
    py = env_dir / "bin" / "python"
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet",
                          "--disable-pip-version-check", str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    check = ("import importlib.util, repirl_client, repirl_client.adapters.trl, repirl_client.adapters.verl, "
             "repirl_client.adapters.search_and_learn, repirl_client.adapters.openrlhf, repirl_client.cli\n"
             "assert importlib.util.find_spec('torch') is None and importlib.util.find_spec('repirl') is None\n"
             "from importlib.metadata import distributions\n"
             "print(sorted(d.metadata['Name'].lower() for d in distributions()))")
    got = subprocess.run([str(py), "-c", check], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    names = set(eval(got.stdout))  # noqa: S307 - our own printed list
    assert {"repirl-client", "httpx", "pydantic"} <= names and not names & {"torch", "repirl", "transformers"}
    helped = subprocess.run([str(env_dir / "bin" / "repirl-client"), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert helped.returncode == 0 and "repirl-client" in helped.stdout
