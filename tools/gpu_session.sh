#!/usr/bin/env bash
# Issue 26's device session in ONE call on a lent GPU machine (about 4 minutes; every section has a time cap and the
# whole run stops starting sections after TOTAL seconds), from the repository root with gpu_bundle/ carried:
#
#   bash tools/gpu_session.sh                 # $OUT (set by the device tool) gets the logs and JSON figures
#   DEVICE=cpu bash tools/gpu_session.sh      # the CPU rehearsal: the same sections on tiny models (a few minutes)
#
# Sections: the bundle's wheels into $SITE (pip --target, no index), then
#   bench      trainer/gpu_bench.py: plain-transformers anchor, the trainer's update (MFU vs the anchor), log-prob
#              kernels (liger-kernel too), logits memory, a torch.profiler table of one update  -> bench.json, profile.txt
#   rollouts   trainer/gpu_bench.py rollouts: HFEngine vs plain generate, 128 x 128 tokens    -> rollouts.json
#   gpu-check  trainer/gpu_check.py: 3 rePIRL iterations, per-phase times, MFU, peak memory   -> gpucheck.json
#   service    load_tests/gpu_service.py: `repirl serve` on the GPU, /v1/score and /v1/search -> service.json, service.log
#   pytest     pytest -m gpu tests/gpu, and the two tests that assumed a CPU
#   summary    tools/gpu_summary.py: one table of every figure                                -> summary.txt
# Each section prints its figures as it gets them and writes its JSON at once, so a failing or killed section
# never loses the others; log.txt holds everything (8 files come back at most: these are 8).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
PY=${PY:-python3}
SITE=${SITE:-/tmp/site}
TOTAL=${TOTAL:-330}
DEVICE=${DEVICE:-auto}
CAPX=${CAPX:-1}  # scales every section's cap (the CPU rehearsal on a loaded machine: CAPX=5 TOTAL=1800)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
if [ "$DEVICE" = cpu ]; then
  DEV=(--device cpu --tiny); SERVICE=(--device cpu --tiny --seconds 3 --clients 2 --search-clients 1)
  export REPIRL_GPU_TEST_DEVICE=cpu
else
  DEV=(); SERVICE=(--seconds 12)
fi

echo "== gpu-session $(date -u +%FT%TZ) in $PWD, device $DEVICE, total cap ${TOTAL}s"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
tag=$($PY -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
wheels=$(ls gpu_bundle/*.whl 2>/dev/null | grep -E -- "-none-any\.whl|-$tag-")
if [ -n "$wheels" ]; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $wheels; then
    echo "bundle: $(echo "$wheels" | wc -l) wheels into $SITE (pip)"
  else  # no pip: wheels are zip files
    $PY -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' "$SITE" $wheels \
      && echo "bundle: pip failed; $(echo "$wheels" | wc -l) wheels unzipped into $SITE"
  fi
else
  echo "bundle: no wheels for $tag in gpu_bundle/ (make gpu-bundle)"
fi
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
$PY -c 'import sys, torch, transformers; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda",
torch.version.cuda, "available", torch.cuda.is_available(), "transformers", transformers.__version__)'

section() {  # section NAME CAP CMD...: run CMD under min(CAP, what is left of TOTAL); log its rc and seconds
  local name=$1 cap=$2; shift 2
  cap=$((cap * CAPX))
  local left=$((TOTAL - ($(date +%s) - START)))
  if [ "$left" -lt 15 ]; then echo "== $name: SKIPPED (${left}s left of ${TOTAL}s)"; echo "$name skipped 0" >>"$OUT/.sections"; return; fi
  [ "$cap" -gt "$left" ] && cap=$left
  echo "== $name (cap ${cap}s)"
  local t0=$(date +%s)
  timeout -k 5 "$cap" "$@"
  local rc=$?
  echo "== $name: rc $rc in $(($(date +%s) - t0)) s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
  echo "$name $rc $(($(date +%s) - t0))" >>"$OUT/.sections"
}

rm -f "$OUT/.sections"
section bench 80 $PY -m trainer.gpu_bench "${DEV[@]}" --out "$OUT" --repeats 3 \
  --sections anchor,update,kernels,memory,profile
section rollouts 80 $PY -m trainer.gpu_bench "${DEV[@]}" --out "$OUT" --name rollouts --sections rollouts
section gpu-check 75 $PY -m trainer.gpu_check "${DEV[@]}" --bundle gpu_bundle --json "$OUT/gpucheck.json"
section service 70 $PY load_tests/gpu_service.py "${SERVICE[@]}" --out "$OUT"
section pytest 80 $PY -m pytest -v -p no:cacheprovider -rs --tb=short --timeout 60 -m "gpu or not gpu" tests/gpu \
  "tests/trainer/test_gpu_check.py::test_make_gpu_check_without_gpu_says_so_and_exits_0" \
  "tests/trainer/test_scaling.py::test_device_auto_is_the_cpu_here_and_bad_values_are_named"
$PY tools/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
rm -f "$OUT/.sections"
echo "== gpu-session done in $(($(date +%s) - START)) s"
