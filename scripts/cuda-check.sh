#!/usr/bin/env bash
# Checks Man.ML on a CUDA GPU: the backend check on the GPU, sequential and pipelined training on it, and pipelines
# whose stages sit on different devices (one GPU and the CPU, both ways). Prints each run's last lines.
#
#   scripts/cuda-check.sh [MANML_DLL]
#
# MANML_DLL: a built manml.dll (default: Man.ML.Samples' Release build). libtorch with CUDA must be loadable: an
# application references TorchSharp-cuda-linux, or (how this was first run, docs/BENCHMARKS.md "CUDA") LD_LIBRARY_PATH
# names the lib folder of a PyTorch install with CUDA ahead of the CPU build's native folder. Exit status: the number of
# runs that failed.
set -u
MANML=${1:-Man.ML.Samples/bin/Release/net10.0/manml.dll}
[ -f "$MANML" ] || { echo "cuda-check: $MANML not found (build Man.ML.Samples -c Release, or give the path)" >&2; exit 2; }
OUTDIR=$(mktemp -d)
trap 'rm -rf "$OUTDIR"' EXIT
failed=0
run() {
  local name=$1; shift
  echo "### $name: manml $*"
  if timeout 600 dotnet "$MANML" "$@" --out "$OUTDIR/$name" > "$OUTDIR/$name.log" 2>&1; then
    grep -v '^\s*$' "$OUTDIR/$name.log" | grep -E '^│ [0-9]|^final|images/s|backend check' | head -8
  else
    failed=$((failed + 1)); echo "FAILED:"; tail -20 "$OUTDIR/$name.log"
  fi
  echo
}
echo "### doctor: manml doctor --device cuda"
dotnet "$MANML" doctor --device cuda | tail -3 || failed=$((failed + 1))
echo
run cuda train --device cuda --epochs 1 --seed 0
run cuda-bf16 train --device cuda --epochs 1 --seed 0 --precision bf16
run cuda-pipeline-d0 train --device cuda --epochs 1 --seed 0 --pipeline 2 --stage-devices cuda:0,cuda:0 --pipeline-depth 0
run cuda-pipeline-d1 train --device cuda --epochs 1 --seed 0 --pipeline 2 --stage-devices cuda:0,cuda:0 --pipeline-depth 1
run gpu-then-cpu train --device cuda --epochs 2 --seed 0 --train-limit 1024 --pipeline 2 --stage-devices cuda:0,cpu
# Lock-step with the GPU second against the CPU alone: the same losses up to the GPU's rounding.
run cpu-then-gpu-lockstep train --device cuda --epochs 2 --seed 0 --train-limit 1024 --rule infopro --pipeline 2 \
  --stage-devices cpu,cuda:0 --pipeline-depth 0
run cpu-reference train --device cpu --epochs 2 --seed 0 --train-limit 1024 --rule infopro
echo "$failed run(s) failed"
exit $failed
