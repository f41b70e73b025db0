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
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def test_make_gpu_check_without_gpu_says_so_and_exits_0():
    res = subprocess.run(["make", "-s", "gpu-check"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
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
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    raw["rollouts"]["sleep_levl"] = 1  # the schema still names a misspelt key
    bad = tmp_path / name
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(Exception, match="rollouts.sleep_levl"):
        load_config(bad)
