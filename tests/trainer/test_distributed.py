"""Two processes (torchrun, gloo on CPU), with the policy and the PRMs sharded by FSDP2 (trainer/distributed.py):

1. one PRM step (logprob and head PRMs) + one policy step on half the questions each give the same weights as a
   single process on the whole batch (FSDP sums the ranks' gradients; losses divide by global counts), each rank
   holds about half of the policy's parameters, and a gathered checkpoint loads back into the shards exactly;
2. a whole 2-process training run (Trainer: generate under FSDP, collective checkpoints, export of full weights)
   resumed from an earlier checkpoint ends bit-identical to the uninterrupted run.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import REPO
from tests.trainer.conftest import child_env, one_and_two_processes, torchrun

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_dist_worker.py")
ENV = child_env(OMP_NUM_THREADS="1")


@pytest.mark.slow
def test_two_process_step_equals_single_process(tiny_policy_dir, tmp_path):
    from safetensors.torch import load_file

    single = subprocess.run([sys.executable, WORKER, str(tiny_policy_dir), str(tmp_path / "one")], env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    two = torchrun(WORKER, str(tiny_policy_dir), str(tmp_path / "two"))

    held = {int(r): (int(n), int(full)) for r, n, full in
            (line.split()[1:] for line in two.stdout.splitlines() if line.startswith("local_numel"))}
    assert sorted(held) == [0, 1]
    full = held[0][1]
    assert sum(n for n, _ in held.values()) == full  # every element held exactly once...
    assert all(0.45 * full <= n <= 0.55 * full for n, _ in held.values()), held  # ...about half on each rank
    assert "roundtrip ok" in two.stdout and "roundtrip ok" in single.stdout
    clip = lambda out: [ln.split() for ln in out.splitlines() if ln.startswith("policy_steps")][0]  # noqa: E731
    assert clip(single.stdout)[1] == clip(two.stdout)[1] == "2"  # two mini-batches: two optimizer steps
    assert float(clip(single.stdout)[3]) > 0  # the second mini-batch's ratio left the clip range somewhere
    assert float(clip(two.stdout)[3]) == pytest.approx(float(clip(single.stdout)[3]), abs=1e-6)  # global clip_frac

    for kind in ("logprob", "head"):
        loss = lambda out: float(out.split(f"prm_loss_{kind}")[1].split()[0])  # noqa: E731
        assert loss(two.stdout) == pytest.approx(loss(single.stdout), rel=1e-5)
    init = load_file(str(tiny_policy_dir / "model.safetensors"))
    for sub in ("policy", "prm_logprob", "prm_head"):
        a = load_file(str(tmp_path / "one" / sub / "model.safetensors"))
        b = load_file(str(tmp_path / "two" / sub / "model.safetensors"))
        assert a.keys() == b.keys(), sub  # full weights, tied embeddings saved once as in a single process
        assert any(k in init and not torch.equal(a[k], init[k]) for k in a), f"{sub}: the step changed nothing"
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), f"{sub}.{k}"


@pytest.mark.slow
def test_two_process_training_run_resumes_exactly(recipe, tmp_path):
    from safetensors.torch import load_file

    raw = recipe(name="d2", questions_per_iter=4, checkpoint_every=1)  # 4: an equal question shard per rank
    path = tmp_path / "d2.yaml"
    path.write_text(yaml.safe_dump(raw))
    torchrun("-m", "trainer.train_cli", "--config", str(path), "--no-progress")
    run = tmp_path / "d2"
    assert json.loads((run / "checkpoints" / "iter_000001" / "state.json").read_text())["sharded"] is True

    # the same run, resumed from its first checkpoint (as if killed during iteration 2)
    raw["name"] = "d2b"
    (tmp_path / "d2b.yaml").write_text(yaml.safe_dump(raw))
    shutil.copytree(run, tmp_path / "d2b")
    saved = yaml.safe_load((run / "config.yaml").read_text())  # --resume requires the run's own (normalised) config
    (tmp_path / "d2b" / "config.yaml").write_text(yaml.safe_dump({**saved, "name": "d2b"}, sort_keys=False))
    for gone in ("checkpoints/iter_000002", "policy", "prm", "summary.json"):
        p = tmp_path / "d2b" / gone
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    torchrun("-m", "trainer.train_cli", "--config", str(tmp_path / "d2b.yaml"), "--no-progress", "--resume")

    rows = lambda r: [{k: v for k, v in json.loads(x).items() if not k.startswith("t_")}  # noqa: E731
                      for x in (r / "metrics.jsonl").read_text().splitlines()]
    assert rows(run) == rows(tmp_path / "d2b") and len(rows(run)) == 2
    init = load_file(str(raw["policy"]) + "/model.safetensors")
    for sub in ("policy", "prm"):
        a = load_file(str(run / sub / "model.safetensors"))
        b = load_file(str(tmp_path / "d2b" / sub / "model.safetensors"))
        assert a.keys() == init.keys(), sub  # full weights (tied embeddings once), as a single process saves them
        assert any(not torch.equal(a[k], init[k]) for k in a), f"{sub}: training changed nothing"
        assert all(torch.equal(a[k], b[k]) for k in a), sub


@pytest.mark.slow
def test_ranks_with_unequal_shares_keep_fsdp_collectives_paired(tiny_policy_dir, tmp_path):
    """Micro-batches of 2 rows under FSDP2 when rank 0 holds two questions and rank 1 one (tests/trainer/
    _uneven_worker.py): FSDP2 all-gathers the weights in every forward, so every rank must run as many forwards
    (and backwards) as the others. The rePIRL PRM step, the PPO step and PRIME's PRM update, the last with a
    mini-batch in which rank 1 has no row, give the weights one process computes on the same global mini-batches.
    Before the ranks' micro-batch counts were matched, the first uneven scoring pass left the collectives unpaired.
    The training loops' micro-batches then each agreed on a count again (a collective per micro-batch): no more."""
    two, a, b = one_and_two_processes("_uneven_worker.py", tiny_policy_dir, tmp_path)
    assert "uneven ok" in two.stdout
    from safetensors.torch import load_file

    init = load_file(str(tiny_policy_dir / "model.safetensors"))
    for sub in ("policy", "prm", "prime"):
        assert any(k in init and (a[sub][k] - init[k]).abs().max() > 1e-4 for k in a[sub]), f"{sub}: no step"
        for k in a[sub]:
            assert torch.allclose(a[sub][k], b[sub][k], atol=1e-5, rtol=1e-4), (sub, k)
    assert b["policy_steps"] == a["policy_steps"] == 2
    assert b["prime_steps"] == 2  # PRIME's third mini-batch is empty on every rank: no step
    # the forward-count agreements, one per split into micro-batches, on rank 0: the worker's two scoring passes, the
    # PRM step's scoring pass and update, 2 PPO mini-batches, PRIME's 2 non-empty mini-batches. Each micro-batch of
    # those loops asked again before its forward (18 in all here; always 1 forward then)
    assert b["all_max_calls"] == 8 and a["all_max_calls"] == 0
    for key in ("prm_loss", "policy_loss", "entropy", "clip_frac"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key


def test_teardown_leaves_the_process_group_and_train_cli_calls_it(tmp_path, monkeypatch):
    """A rank that exits with its gloo group still up can abort in interpreter shutdown ("terminate called without an
    active exception", exit -6: a CI failure of a finished two-process run). trainer.distributed.teardown leaves the
    group; the `train` command (`repirl train`, `-m trainer.train_cli`) calls it whatever the run's outcome."""
    import torch.distributed as tdist

    from trainer import distributed, train_cli

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert tdist.is_initialized()
        distributed.teardown()
        assert not tdist.is_initialized()
        distributed.teardown()  # a no-op without a group
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    calls = []
    monkeypatch.setattr(distributed, "teardown", lambda: calls.append(1))

    def failing_run(*args, **kwargs):
        raise RuntimeError("the run failed")

    monkeypatch.setattr(train_cli, "run_training", failing_run)
    with pytest.raises(RuntimeError, match="the run failed"):  # the command behind `repirl train` and train_cli
        train_cli.train(config=REPO / "configs" / "tiny.yaml", resume=False, iterations=None, seed=None, name=None,
                        policy=None, no_progress=True)
    assert calls == [1]
