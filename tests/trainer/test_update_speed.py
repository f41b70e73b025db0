"""Issue 26's update-speed changes that the CPU can check: micro-batches grouped by length (less padding, the same
results), the frozen reference's forward only when the kl_init metric is asked for, the update's sums kept on the
model's device and read once, and child processes that keep the caller's PYTHONPATH."""

import os
import subprocess
import sys

import pytest
import torch

from trainer.models import collate, map_micro_batches


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_micro_batches_are_grouped_by_length_and_put_back_in_order():
    lengths = [40, 5, 38, 6, 39, 7, 41, 4]  # long and short rows interleaved: in order, every micro-batch pads to ~40
    seqs = [[i + 3] * k for i, k in enumerate(lengths)]
    batch = collate(seqs, [2] * 8, lengths, 0)
    shapes = []

    def fn(mb):  # a per-row quantity that depends only on the row: its ids, as floats
        shapes.append(tuple(mb.ids.shape))
        return (mb.ids.float() * mb.attn,)

    got = map_micro_batches(batch, 2, fn)[0]
    assert torch.equal(got, batch.ids.float() * batch.attn)  # every row back in its place, zeros past its end
    padded = sum(r * w for r, w in shapes)
    assert padded == 2 * 41 + 2 * 39 + 2 * 7 + 2 * 5  # sorted: [41, 40], [39, 38], [7, 6], [5, 4]
    assert padded < 8 * 41 * 0.6  # in the original order each pair would pad to 40 or 41


def test_the_reference_forward_runs_only_for_the_kl_metric(recipe):
    from trainer.config import parse_config
    from trainer.loop import Trainer

    for kl, want in ((False, 0), (True, 1)):
        trainer = Trainer(parse_config(recipe(name=f"kl{kl}", iterations=1, eval_problems=0, kl_to_init=kl)))
        trainer.engine = trainer._make_engine()
        calls = []
        trainer.init_policy.register_forward_pre_hook(lambda *a: calls.append(1))
        row = trainer.iteration(0)
        assert len(calls) == want and ("kl_init" in row) == kl, (kl, calls, row)
        if kl:
            assert row["kl_init"] == pytest.approx(0.0, abs=1e-6)  # float32: the policy is still its initial self


def test_policy_step_reads_its_device_sums_once(tiny_policy_dir, monkeypatch):
    """The update's metrics are accumulated on the model's device and read with one .tolist() at the end (a float()
    per micro-batch would wait for the GPU every time): count the host reads of device tensors during the step."""
    from trainer.algorithms import policy_step
    from trainer.config import PolicyTrainConfig
    from trainer.device import Compute, attach
    from trainer.models import load_causal_lm, token_logprobs

    model = attach(load_causal_lm(tiny_policy_dir).train(), Compute(micro_batch_size=2, chunk_tokens=8))
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 250, (int(k),), generator=g).tolist() for k in torch.randint(8, 20, (6,), generator=g)]
    batch = collate(seqs, [3] * 6, [len(s) for s in seqs], 0)
    with torch.no_grad():
        old = token_logprobs(model, batch)
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or real_tolist(self))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    stats = policy_step(model, opt, batch, old, torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, 0.1]),
                        PolicyTrainConfig(mini_batch_size=None), n=1)
    assert reads == [torch.Size([3])]  # loss, entropy and clipped tokens in one read
    assert stats["policy_steps"] == 1 and stats["entropy"] > 0


def test_child_processes_keep_the_callers_pythonpath(monkeypatch, tmp_path):
    from tests.trainer.conftest import REPO, child_env

    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # e.g. /tmp/site holding the bundle's packages on a GPU image
    (tmp_path / "bundled_probe_h26.py").write_text("X = 26\n")
    out = subprocess.run([sys.executable, "-c", "import bundled_probe_h26, trainer; print(bundled_probe_h26.X)"],
                         env=child_env(OMP_NUM_THREADS="1"), cwd="/", capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "26", out.stderr[-2000:]
    assert child_env()["PYTHONPATH"].split(os.pathsep) == [REPO, str(tmp_path)]
