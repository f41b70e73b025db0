"""Training checkpoints through torch distributed checkpoint (DCP): `checkpoints/iter_NNNNNN/` (the two newest).

Every rank writes its own shards (`get_state_dict` returns FSDP2's DTensor shards as they are; nothing is gathered
on one rank, so a 7B policy + AdamW state is never assembled in one process's memory) and rank 0 writes DCP's
`.metadata` and our `state.json`. One process writes the same format with plain tensors. State dicts are keyed by
parameter name (model and optimizer alike), and DCP stores each tensor's global shape, so `load` reshards: a
checkpoint resumes under any number of processes, one included.

Atomic: all ranks write into `checkpoints/.iter_NNNNNN.tmp/`, then rank 0 adds state.json and renames the folder in
one step; `latest` only considers folders with a state.json, so a kill mid-save leaves the previous checkpoint.
(The folder must be on storage every rank sees, as for any DCP checkpoint across nodes.)

Iteration RNG needs no saving: every iteration reseeds torch and the question draw from (seed, iteration). The lr
schedule is a function of the optimizer steps taken, which state.json keeps (`lr_steps`; trainer/schedule.py).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path

import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_state_dict, set_model_state_dict,
                                                     set_state_dict)

from trainer import distributed as dist


class CheckpointError(RuntimeError):
    pass


@contextlib.contextmanager
def _quiet():
    # one process is a supported DCP mode; torch warns about it on every save and load
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _parts(parts: dict) -> dict:
    return {name: mo for name, mo in parts.items() if mo[0] is not None}


def _stateful(model, opt, with_optimizer: bool) -> dict:
    # An optimizer that has never stepped has no state; get_state_dict would create it by running one step with zero
    # gradients (torch's _init_optim_state), and AdamW's step count would then be one ahead of an uninterrupted run.
    if opt is None or not with_optimizer:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, opt)
    return {"model": model_sd, "optim": optim_sd}


def save(run_dir: Path, iteration: int, parts: dict, keep: int = 2, lr_steps: dict | None = None) -> Path:
    """parts: {"policy": (module, optimizer), "prm": (module or None, optimizer or None)}; lr_steps: optimizer steps
    taken per scheduled optimizer ({"policy": k}), for the lr schedule of a resumed run. Collective."""
    root = Path(run_dir) / "checkpoints"
    final, tmp = root / f"iter_{iteration:06d}", root / f".iter_{iteration:06d}.tmp"
    if dist.rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    parts = _parts(parts)
    stepped = {name: bool(opt is not None and opt.state) for name, (_, opt) in parts.items()}
    with _quiet():
        dcp.save({name: _stateful(m, opt, stepped[name]) for name, (m, opt) in parts.items()}, checkpoint_id=tmp)
    dist.barrier()  # every rank's shards are on disk
    if dist.rank() == 0:
        meta = {"iteration": iteration, "format": "dcp", "world": dist.world(), "sharded": dist.world() > 1,
                "optimizer_state": stepped, "lr_steps": lr_steps or {}}
        (tmp / "state.json").write_text(json.dumps(meta))
        old = root / f".iter_{iteration:06d}.old"
        if final.exists():  # only when a resumed run writes the same iteration again
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        for stale in sorted(root.glob("iter_*"))[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    dist.barrier()
    return final


def latest(run_dir: Path) -> Path | None:
    done = sorted(p for p in (Path(run_dir) / "checkpoints").glob("iter_*") if (p / "state.json").exists())
    return done[-1] if done else None


def load(folder: Path, parts: dict) -> int:
    """Load a checkpoint written by `save` (with any number of processes) into the models and optimizers, in place.
    Returns its iteration. Collective."""
    meta = json.loads((folder / "state.json").read_text())
    if meta.get("format") != "dcp":
        raise CheckpointError(f"{folder} was written by an older trainer (state.pt, full weights); it cannot be "
                              "resumed by this one: start the run again without --resume")
    parts = _parts(parts)
    stepped = meta["optimizer_state"]
    if set(stepped) != set(parts):
        raise CheckpointError(f"{folder} holds {sorted(stepped)}, this run trains {sorted(parts)}")
    state = {name: _stateful(m, opt, stepped[name]) for name, (m, opt) in parts.items()}
    with _quiet():
        dcp.load(state, checkpoint_id=folder)  # into the (sharded) tensors of `state`, resharded as needed
    for name, (model, opt) in parts.items():
        if "optim" in state[name]:
            set_state_dict(model, opt, model_state_dict=state[name]["model"], optim_state_dict=state[name]["optim"])
        else:
            set_model_state_dict(model, state[name]["model"])
    return int(meta["iteration"])


def lr_steps(folder: Path) -> dict | None:
    """The optimizer steps a checkpoint recorded for the lr schedule; None for checkpoints written before it did."""
    return json.loads((Path(folder) / "state.json").read_text()).get("lr_steps")
