"""Two processes (torchrun, gloo on CPU) take half the questions each; after one PRM step and one policy step their
weights must equal a single process's on the whole batch (gradients are summed over ranks; losses divide by global
counts)."""

import os
import socket
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_dist_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_step_equals_single_process(tiny_policy_dir, tmp_path):
    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, WORKER, str(tiny_policy_dir), str(tmp_path / "one")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), WORKER,
                          str(tiny_policy_dir), str(tmp_path / "two")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    loss = lambda out: float(out.split("prm_loss")[1].split()[0])  # noqa: E731
    assert loss(two.stdout) == pytest.approx(loss(single.stdout), rel=1e-5)
    init = load_file(str(tiny_policy_dir / "model.safetensors"))
    for sub in ("policy", "prm"):
        a = load_file(str(tmp_path / "one" / sub / "model.safetensors"))
        b = load_file(str(tmp_path / "two" / sub / "model.safetensors"))
        assert any(not torch.equal(a[k], init[k]) for k in a), f"{sub}: the step changed nothing"
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), f"{sub}.{k}"
