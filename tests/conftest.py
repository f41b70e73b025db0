"""Session-wide test setup: offline, small vLLM KV cache, and shared tiny models built in code."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite runs on two pytest-xdist workers (Makefile). vLLM's CPU default ("auto") pins every engine's OpenMP
# threads to the same first core and reserves the other, so two workers' engines would share one core while the
# other idles: let the OS schedule them.
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
# The service's transformers engines default to the GPU in bf16 where torch sees one (server/settings.py hf_device);
# the suite's numbers (scores against float32 references, vLLM vs transformers to 1e-4) are float32 CPU facts, so
# the suite pins them to the CPU on a GPU host too. The CUDA paths have their own tests (tests/gpu, `-m gpu`).
os.environ.setdefault("REPIRL_HF_DEVICE", "cpu")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run: a CI failure is reproducible, never a dice roll.
settings.register_profile("repirl", derandomize=True, deadline=None)
settings.load_profile("repirl")

def assert_vllm_matches_hf(prm_dir, items, **vllm_kwargs):
    """Score `items` on the transformers engine and on the vLLM engine: step rewards (and token rewards, where the
    format has them) must agree to 1e-4. Returns (vLLM scores, the closed vLLM scorer) for further checks.

    The vLLM engine runs its engine core in this process (`engine_core_in_process`): the same model code, scheduler
    and pooler as a spawned core, about 20 s less per engine here; the spawned core, as the service runs it, is
    covered by the service's tests (tests/server/test_vllm_service.py and the others on `vllm_server`)."""
    from repirl.scoring.loader import load_scorer
    from repirl.vllm_setup import engine_core_in_process

    want = load_scorer(prm_dir, engine="hf", kv_cache_tokens=0).score(items)
    with engine_core_in_process():
        engine = load_scorer(prm_dir, engine="vllm", **{"max_model_len": 256, **vllm_kwargs})
    try:
        got = engine.score(items)
    finally:
        engine.close()
    for g, w in zip(got, want, strict=True):
        assert g.step_rewards == pytest.approx(w.step_rewards, abs=1e-4)
        if w.token_rewards is not None:
            for gt, wt in zip(g.token_rewards, w.token_rewards, strict=True):
                assert gt == pytest.approx(wt, abs=1e-4)
    return got, engine


REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO.parent / "shared" / "data" / "gsm8k"


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from repirl.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory, tiny_tokenizer):
    """A random-weight tiny Qwen2 policy folder (with policy.json), shared by the whole session."""
    import torch
    from transformers import Qwen2ForCausalLM

    from repirl.artifacts import PolicyConfig, save_model_folder
    from repirl.tiny import tiny_qwen2_config

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(tiny_qwen2_config(len(tiny_tokenizer), num_layers=2, eos_token_id=tiny_tokenizer.eos_token_id))
    return save_model_folder(model, tiny_tokenizer, tmp_path_factory.mktemp("models") / "policy",
                             policy_config=PolicyConfig())


@pytest.fixture(scope="session")
def tiny_prm_dir(tiny_policy_dir, tmp_path_factory):
    """A token-reward PRM initialised from the tiny policy, with prm.json."""
    from repirl.artifacts import init_token_reward_prm

    return init_token_reward_prm(tiny_policy_dir, tmp_path_factory.mktemp("models") / "prm")


# Files that share one session-scoped vLLM service (`vllm_server`, tests/server/conftest.py: two engines, ~90 s to
# start here): one work unit for `make test`'s two xdist workers, so one worker starts it once for all of them
# (under plain --dist loadfile each worker that ran one of these files started its own).
SHARED_ENGINE_GROUPS = {
    "vllm-service": ("tests/server/test_vllm_service.py", "tests/server/test_probe_findings_vllm.py",
                     "tests/server/test_search_engines.py"),
}
_GROUP_OF = {path: name for name, paths in SHARED_ENGINE_GROUPS.items() for path in paths}


def _work_unit(path: str) -> str:
    return _GROUP_OF.get(path, path)


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` with SHARED_ENGINE_GROUPS: whole files per worker (module-scoped services stay on one),
    and the files of a group together. (xdist's own `loadgroup` marks do not work on pytest 9: it renames items
    through `item._nodeid`, which pytest 9 no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class EngineSharingScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid.split("::", 1)[0])

    return EngineSharingScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Work units with vLLM engines first (shared groups, the longest, ahead), then other slow ones: `make test`'s two
    workers take units as they free up, so starting with the longest leaves short files, not one long unit, for the
    end (a stable sort: the order within a file and among the rest is unchanged)."""
    unit = {item: _work_unit(item.path.relative_to(REPO).as_posix()) for item in items}
    heavy = {unit[item] for item in items if item.get_closest_marker("vllm") or item.get_closest_marker("slow")}
    vllm = {unit[item] for item in items if item.get_closest_marker("vllm")}
    items.sort(key=lambda item: (unit[item] not in vllm, unit[item] not in heavy,
                                 unit[item] not in SHARED_ENGINE_GROUPS))
