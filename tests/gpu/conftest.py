"""The CUDA paths (issue 26), marked `gpu`: `make gpu-check` runs them on a GPU machine (`pytest -m gpu tests/gpu`);
`make test` deselects them (`-m "not gpu"`: CI has no GPU). Run bare on a machine without a GPU they skip, saying
so. `REPIRL_GPU_TEST_DEVICE=cpu` runs the same tests on the CPU (gloo instead of NCCL): the rehearsal that keeps
them from failing on a typo when a GPU is finally there."""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = os.environ.get("REPIRL_GPU_TEST_DEVICE", "cuda")


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(os.path.abspath(__file__))
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False); `make gpu-check` runs "
                                   "these on a GPU machine, REPIRL_GPU_TEST_DEVICE=cpu rehearses them on the CPU")
    for item in items:  # (each module also says `pytestmark = pytest.mark.gpu`, which -m reads)
        if str(item.fspath).startswith(here) and DEVICE == "cuda" and not torch.cuda.is_available():
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    return torch.device(DEVICE)
