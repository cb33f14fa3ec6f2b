#!/usr/bin/env bash
# make gpu-check: the engine's CUDA path proved on a machine with a GPU, in one run, everything
# it prints and its tables under OUT (default runs/gpu-check):
#   1. the extension built there with the CUDA kernels (sm_80, sm_90), and nvcc's budget check;
#   2. the kernels against the CPU kernels, and the engine on the GPU against the CPU engine
#      (tests/test_devices.py), then under compute-sanitizer (memcheck, racecheck, synccheck);
#   3. parity on the GPU: the engine (float32, TF32 off) against the Python reference, greedy
#      and beam 5, in batches of 64 and alone; bfloat16 BLEU against float32
#      (benchmarks/gpu_parity.py);
#   4. seq2seq bench --device cuda: the engine against the Python reference (PyTorch eager) and,
#      where its wheel is installed, CTranslate2 on the same GPU.
# What it needs comes from `make gpu-check-prepare` on a CPU machine (runs/gpu: the exports,
# the test pairs, wheels the GPU image lacks), carried to the GPU machine with the checkout.
# DEVICE=cpu runs steps 2-4 on the CPU: how the script itself is tested.
set -uo pipefail
OUT=${OUT:-runs/gpu-check}
DEVICE=${DEVICE:-cuda}
PREPARED=${PREPARED:-runs/gpu}
PY=${PY:-python3}
SENTENCES=${SENTENCES:-1000}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
failed=()
step() { echo; echo "== $*"; }
run() { "$@" || failed+=("$*"); }

step "machine"
date -u
if [ "$DEVICE" = cuda ]; then nvidia-smi | tee "$OUT/nvidia-smi.txt"; fi
$PY -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU", torch.cuda.is_available())'

step "install and build"
if [ -d "$PREPARED/wheels" ]; then
  run $PY -m pip install -q --no-index --find-links "$PREPARED/wheels" -r "$PREPARED/wheels/requirements.txt"
fi
if [ "$DEVICE" = cuda ]; then
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-8.0;9.0}
  $PY -m pip install -q --no-build-isolation --no-deps -e . || { echo "the build failed"; exit 1; }
  $PY -c 'import seq2seq._C as c; assert c.CUDA_KERNELS, "built without the CUDA kernels"; print("CUDA kernels built")' \
    || exit 1
fi
$PY -m seq2seq.server.protos >/dev/null

step "kernels and engine against the CPU"
run $PY -m pytest -q tests/test_devices.py tests/test_cuda_build.py
if [ "$DEVICE" = cuda ]; then
  for tool in memcheck racecheck synccheck; do
    step "compute-sanitizer --tool $tool"
    run compute-sanitizer --tool "$tool" --error-exitcode 1 \
      $PY -m pytest -q -p no:cacheprovider tests/test_devices.py -k cuda_kernels
  done
fi

models=()
for m in "$PREPARED"/*/export; do [ -f "$m/config.json" ] && models+=(--model "$m"); done
if [ ${#models[@]} -eq 0 ]; then
  echo "no exports under $PREPARED: run make gpu-check-prepare on a CPU machine and carry $PREPARED"
  failed+=("exports")
else
  step "parity on $DEVICE"
  run $PY benchmarks/gpu_parity.py --device "$DEVICE" "${models[@]}" --pairs "$PREPARED/test.tsv" \
    --sentences "$SENTENCES" --alone "$SENTENCES" --out "$OUT"
  for ((i = 1; i < ${#models[@]}; i += 2)); do
    m=${models[$i]}
    step "bench $m"
    # CTranslate2 runs Transformers only, and only where its wheel is installed.
    family=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1] + "/config.json"))["model"]["family"])' "$m")
    against=$([ "$family" = transformer ] && $PY -c 'import ctranslate2' 2>/dev/null && echo "--against ctranslate2")
    run $PY -m seq2seq bench --device "$DEVICE" --model "$m" --input "$PREPARED/test.src" \
      --sentences "$SENTENCES" --cases greedy:1,beam5:1,beam5:64 --compute-type float32,bfloat16 $against \
      --out "$OUT/bench-$(basename "$(dirname "$m")").json"
  done
fi

step "done"
if [ ${#failed[@]} -eq 0 ]; then echo "gpu-check: every step passed; $OUT"; exit 0; fi
printf 'gpu-check: failed: %s\n' "${failed[@]}"
exit 1
