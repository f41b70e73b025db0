"""Trainer test helpers. The tiny random policy folder (`tiny_policy_dir`) comes from tests/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_env(**extra) -> dict:
    """The environment for a child process: the repo first on PYTHONPATH, the caller's PYTHONPATH kept after it
    (on a GPU image the packages the image lacks come from gpu_bundle/ through that PYTHONPATH)."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


# A rank killed by gloo's C++ runtime (std::terminate with no exception, SIGABRT) at interpreter shutdown, after the
# run had finished: a gloo worker thread freeing its last collective's output needs the GIL while the main thread is
# already in Py_FinalizeEx (a core dump, 2026-12-07; trainer/distributed.py `teardown`, which now waits for those
# threads, says more). Before that wait: 3 of 6 full test runs on 2026-12-07, 3 of 114 looped torchrun runs. The rerun
# stays as a backstop and warns, so a return of the abort shows in the test report instead of failing CI on a run
# that did its work.
GLOO_ABORT = "terminate called without an active exception"


def _torchrun_once(args) -> subprocess.CompletedProcess:
    from tests.server.conftest import free_port  # below the ephemeral range, which the workers' sockets use

    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(free_port()), *args],
                          env=child_env(OMP_NUM_THREADS="1"), cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def torchrun(*args) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 ARGS` on loopback (a free port, one thread per process); must exit 0. One rerun,
    with a warning in the test report, when a rank died of the gloo abort above: the rerun must pass on its own,
    so every assertion on its output still holds; any other failure fails at once."""
    out = _torchrun_once(args)
    if out.returncode != 0 and GLOO_ABORT in out.stderr:
        import warnings

        warnings.warn(f"torchrun {os.path.basename(str(args[0]))}: a rank aborted in gloo ({GLOO_ABORT!r}); "
                      f"rerun once. stdout: {out.stdout[-500:]}", RuntimeWarning, stacklevel=2)
        out = _torchrun_once(args)
    # stdout too: whether rank 0 got to its last line tells a crash mid-run from an abort at process exit
    assert out.returncode == 0, f"exit {out.returncode}\nstdout: {out.stdout[-1500:]}\nstderr: {out.stderr[-3000:]}"
    return out


def one_and_two_processes(worker: str, policy_dir, tmp_path) -> tuple[subprocess.CompletedProcess, dict, dict]:
    """Run tests/trainer/<worker> alone (argv `policy_dir tmp_path/one 0`) and under torchrun with 2 processes
    (`... tmp_path/two 1`); both must exit 0. Returns the torchrun result and the two `weights.pt` each run's rank 0
    saved (single process, two processes)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), worker)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = subprocess.run([sys.executable, path, str(policy_dir), str(tmp_path / "one"), "0"],
                         env=child_env(OMP_NUM_THREADS="1"), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = torchrun(path, str(policy_dir), str(tmp_path / "two"), "1")
    import torch

    a, b = (torch.load(tmp_path / d / "weights.pt", weights_only=False) for d in ("one", "two"))
    return two, a, b


def small_recipe(tmp_path, policy_dir, **over) -> dict:
    """A recipe small enough that a whole run takes a few seconds on 2 CPU cores; `over` replaces top-level keys
    and merges into the nested ones (`rollouts={"n": 4}` keeps the other rollout settings)."""
    raw = {
        "name": "t", "out_dir": str(tmp_path), "policy": str(policy_dir), "iterations": 2, "questions_per_iter": 3,
        "checkpoint_every": 1, "eval_problems": 4, "threads": 1, "kl_to_init": True,
        "task": {"min_ops": 1, "max_ops": 1, "train_size": 16, "eval_size": 4},
        "rollouts": {"n": 3, "max_new_tokens": 16, "engine": "transformers"},
        # the PRM's calibration after export (trainer/calibration.py), kept to a few short samples
        "calibration": {"problems": 3, "samples": 2, "max_steps": 3, "max_step_tokens": 8},
    }
    for k, v in over.items():
        raw[k] = {**raw[k], **v} if isinstance(v, dict) and isinstance(raw.get(k), dict) else v
    return raw


@pytest.fixture
def recipe(tmp_path, tiny_policy_dir):
    return lambda **over: small_recipe(tmp_path, tiny_policy_dir, **over)


@pytest.fixture
def one_torch_thread():
    """Models this small run 10-25x faster on one thread than on two contended ones (0.35 s vs 9 s measured for
    test_scaling's `_run_updates` with other jobs on the machine). Use: `pytestmark = usefixtures(...)`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
