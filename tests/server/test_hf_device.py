"""The service's transformers engines take a device and a dtype (settings `hf_device`, `hf_dtype`; issue 26): auto is
the GPU in bf16 where torch sees one, the CPU in float32 here; the settings reach the PRM scorer and the policy that
`repirl serve` builds; bad values name the setting. The same engines on a GPU: tests/gpu/test_cuda_paths.py."""

import pytest
import torch

from repirl.devices import resolve_device, resolve_dtype
from repirl.scoring.tiny_prms import build_tiny_prm


def test_auto_is_the_gpu_in_bf16_where_there_is_one_and_bad_values_are_named():
    gpu = torch.cuda.is_available()
    assert resolve_device("auto").type == ("cuda" if gpu else "cpu")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="hf_dtype"):
        resolve_dtype("int8")
    if not gpu:
        with pytest.raises(ValueError, match="hf_device"):
            resolve_device("cuda")


def test_settings_reach_the_engines_repirl_serve_builds(tmp_path):
    from pydantic import ValidationError

    from server.app import build_engines
    from server.settings import load_settings

    prm = build_tiny_prm(tmp_path / "prm", "token-reward")
    policy = prm.parent / f".{prm.name}-policy"  # the tiny causal LM the token-reward PRM was built from
    (policy / "policy.json").write_text("{}")
    settings = load_settings(None, prm=[f"p={prm}"], policy=f"hf:{policy}", engine="hf", hf_device="cpu",
                             hf_dtype="bfloat16")
    scorers, policies = build_engines(settings)
    model = scorers["p"].models[0]
    assert next(model.parameters()).dtype == torch.bfloat16 and scorers["p"].device == torch.device("cpu")
    assert next(policies["policy"].engine.model.parameters()).dtype == torch.bfloat16
    bf16 = scorers["p"].score([("Start with 3. Add 4.", ["3+4=7", "Answer: 7"])])[0].step_rewards
    fp32 = build_engines(load_settings(None, prm=[f"p={prm}"], engine="hf", hf_device="cpu",
                                       hf_dtype="float32"))[0]["p"].score([("Start with 3. Add 4.",
                                                                            ["3+4=7", "Answer: 7"])])[0].step_rewards
    # bf16 keeps 8 mantissa bits (relative step 2**-8 = 0.4%); a few roundings through the layers and the summed
    # step energy stay within 2%, whatever the rewards' scale (about 7.6 here: 0.058 apart in one CI run)
    assert bf16 == pytest.approx(fp32, rel=0.02, abs=0.05) and bf16 != fp32  # bf16 rounding, and bf16 really ran
    for key, value in (("hf_device", "tpu"), ("hf_dtype", "fp8")):
        with pytest.raises(ValidationError, match=key):
            load_settings(None, prm=[str(prm)], **{key: value})
