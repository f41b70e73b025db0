"""`make gpu-check` on a machine without a GPU, its CPU dry run with vLLM made unimportable (the air-gapped stock CUDA
image: rollouts fall back to transformers generate, and nothing imports vLLM), the wheel-bundle loader, the GPU peak
table, and the scaling recipes against the schema."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from trainer import gpu_check

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
       "HF_HUB_OFFLINE": "1"}


def test_make_gpu_check_without_gpu_says_so_and_exits_0():
    # no GPU visible, also on a GPU host (where the real check would otherwise run: that is `make gpu-check`'s job)
    env = {**ENV, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(["make", "-s", "gpu-check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("gpu-check:")]
    assert len(lines) == 1 and "no GPU here" in lines[0], res.stdout


def test_cpu_dry_run_without_vllm(tmp_path):
    # `import vllm` fails in this process, as on a stock CUDA torch image
    code = ("import sys; sys.modules['vllm'] = None\n"
            "from trainer.gpu_check import main\n"
            "rc = main(['--device', 'cpu', '--tiny', '--iterations', '2', '--work', sys.argv[1]])\n"
            "print('VLLM_MODULES', sorted(m for m in sys.modules if m.startswith('vllm.')))\n"
            "sys.exit(rc)\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=ENV, capture_output=True,
                         text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert out.count("vLLM is not installed") == 1, out  # one line says why the rollouts use transformers
    assert "rollouts: transformers" in out and "VLLM_MODULES []" in out
    iters = [ln for ln in out.splitlines() if ln.startswith("iter ")]
    assert [ln.split(":")[0] for ln in iters] == ["iter 1/2", "iter 2/2"], out
    for ln in iters:  # tokens/s of both phases and the log-prob check, measured
        assert "rollouts" in ln and "tokens/s" in ln and "update" in ln
        diff = float(ln.rsplit("trainer| ", 1)[1])
        assert 0 <= diff < 0.1  # the transformers sampler vs the trainer, both bf16 autocast on the CPU
    assert "gpu-check: PASS" in out
    assert (tmp_path / "runs" / "gpu-check" / "config.yaml").exists()


def _wheel(path: Path, files: dict) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_use_bundle_unpacks_wheels_for_this_python(tmp_path, monkeypatch):
    mod = "repirl_bundle_probe"
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    _wheel(tmp_path / f"{mod}-1.0-py3-none-any.whl", {f"{mod}/__init__.py": "X = 1\n"})
    _wheel(tmp_path / f"{mod}_core-1.0-{tag}-{tag}-manylinux2014_x86_64.whl", {f"{mod}_core/__init__.py": "Y = 2\n"})
    _wheel(tmp_path / f"{mod}_core-1.0-cp39-cp39-manylinux2014_x86_64.whl", {f"{mod}_core/__init__.py": "Y = 9\n"})
    monkeypatch.setattr(gpu_check, "NEEDS", (mod, f"{mod}_core"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert "from" in gpu_check.use_bundle(tmp_path)
    import importlib

    assert importlib.import_module(mod).X == 1
    assert importlib.import_module(f"{mod}_core").Y == 2  # this Python's binary wheel, not the cp39 one
    assert gpu_check.use_bundle(tmp_path) == "packages: all present"
    monkeypatch.setattr(gpu_check, "NEEDS", ("repirl_not_bundled_anywhere",))
    with pytest.raises(SystemExit, match="still missing"):
        gpu_check.use_bundle(tmp_path)
    with pytest.raises(SystemExit, match="make gpu-bundle"):
        gpu_check.use_bundle(tmp_path / "empty")


def test_peak_table():
    assert gpu_check.peak_tflops("NVIDIA H200") == 989.0
    assert gpu_check.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.peak_tflops("Some Future GPU") is None


@pytest.mark.parametrize("name", ["qwen2.5-1.5b-1gpu.yaml", "qwen2.5-7b-8gpu.yaml"])
def test_scaling_recipes_validate(name, tmp_path):
    import yaml

    from trainer.config import load_config

    cfg = load_config(REPO / "configs" / name)
    assert cfg.policy.startswith("/path/to/")  # the placeholder the user fills
    assert cfg.dtype == "bfloat16" and cfg.gradient_checkpointing and cfg.micro_batch_size
    assert cfg.prompt_template is not None and cfg.prompt_template.kind == "chat"
    # 8 GPUs x 7.6 B: no unsharded fp32 gradient (30 GB) per rank while accumulating; one GPU: nothing is sharded
    assert cfg.fsdp_accumulate_unsharded == ("8gpu" not in name)
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    raw["rollouts"]["sleep_levl"] = 1  # the schema still names a misspelt key
    bad = tmp_path / name
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match="rollouts.sleep_levl"):
        load_config(bad)


@pytest.mark.slow
def test_gpu_bench_and_summary_cpu_rehearsal(tmp_path):
    """trainer/gpu_bench.py's every section on a tiny model on the CPU (what tools/gpu_session.sh runs on a GPU), and
    tools/gpu_summary.py's table of its JSON: the device script must not fail on a typo once a GPU is there."""
    res = subprocess.run([sys.executable, "-m", "trainer.gpu_bench", "--device", "cpu", "--tiny", "--repeats", "1",
                          "--out", str(tmp_path)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    import json

    got = json.loads((tmp_path / "bench.json").read_text())
    for section in ("anchor", "update", "kernels", "memory", "profile", "rollouts"):
        assert section in got and "error" not in got[section], (section, got.get(section))
    assert all("tokens_per_s" in r for r in got["update"].values() if isinstance(r, dict)), got["update"]
    fused = [r for k, r in got["kernels"].items() if k.startswith("fused") and isinstance(r, dict)]
    assert fused and all(r["max_abs_diff_vs_full"] < 0.05 for r in fused), got["kernels"]  # same log-probs
    assert got["memory"]["fp32_copy_bytes"] == 2 * got["memory"]["bf16_bytes"]
    assert (tmp_path / "profile.txt").read_text().count("\n") > 10
    assert all(got["rollouts"][k]["tokens"] > 0 for k in ("plain_generate_bf16", "trainer_hfengine"))
    table = subprocess.run([sys.executable, "tools/gpu_summary.py", str(tmp_path)], cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=60).stdout
    assert "update: trainer policy_step, fused-chunks " in table and "rollouts 8x16: trainer_hfengine" in table, table


@pytest.mark.slow
def test_gpu_service_cpu_rehearsal(tmp_path):
    """load_tests/gpu_service.py on tiny models on the CPU: `python -m server` with the transformers engines starts,
    /v1/score and /v1/search answer under load without errors, and the figures reach service.json."""
    res = subprocess.run([sys.executable, "load_tests/gpu_service.py", "--device", "cpu", "--tiny", "--seconds", "2",
                          "--clients", "2", "--search-clients", "1", "--out", str(tmp_path)], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "gpu-service: PASS" in res.stdout, (res.stdout + res.stderr)[-3000:]
    import json

    got = json.loads((tmp_path / "service.json").read_text())
    for ep in ("score", "search"):
        assert got[ep]["requests"] > 0 and got[ep]["errors"] == 0 and got[ep]["p99_ms"] >= got[ep]["p50_ms"], got
    assert got["score"]["items_per_s"] == pytest.approx(8 * got["score"]["requests_per_s"], rel=0.02)
    assert any("token-reward on hf" in line for line in got["banner"]), got["banner"]
