#!/usr/bin/env bash
# The first comparison of learning rules (issue 4): CIFAR-10 (JPEG copy), ResNet-32, K = 16 (E2E: K = 1), every row on
# the same budget: the first 10,000 training images, validated on the last 1,000 of the 50,000, 2 epochs, batch 128,
# lr 0.1, seed 1 (and seed 2 for the E2E and DGL rows). Usage: scripts/compare-rules.sh OUT_DIR [MANML_COMMAND...]
# The data is the folder of CIFAR-10 binary batches named by MANML_CIFAR10 (docs/DATA.md).
set -euo pipefail
out=${1:?usage: compare-rules.sh OUT_DIR [manml command]}
shift
manml=("$@")
[ ${#manml[@]} -eq 0 ] && manml=(dotnet run --project Man.ML.Samples -c Release --)
data=${MANML_CIFAR10:-}
if [ -z "$data" ]; then
  echo "compare-rules.sh: set MANML_CIFAR10 to a folder holding CIFAR-10's data_batch_*.bin (see docs/DATA.md)" >&2; exit 2
fi
if [ ! -e "$data" ]; then
  echo "compare-rules.sh: MANML_CIFAR10=$data does not exist (see docs/DATA.md)" >&2; exit 2
fi
common=(--data "$data" --train-limit 10000 --val-split 1000 --arch resnet32 --epochs 2 --batch-size 128)
run() { local name=$1; shift; "${manml[@]}" train "${common[@]}" "$@" --out "$out/$name" > "$out/$name.log" 2>&1; }
mkdir -p "$out"
run e2e-seed1 --rule e2e --k 1 --seed 1
run e2e-seed2 --rule e2e --k 1 --seed 2
run dgl-seed1 --rule dgl --k 16 --seed 1
run dgl-seed2 --rule dgl --k 16 --seed 2
run dgl-man-seed1 --rule dgl --k 16 --man --seed 1
run dgl-man-seed2 --rule dgl --k 16 --man --seed 2
run predsim-seed1 --rule predsim --k 16 --seed 1
run predsim-man-seed1 --rule predsim --k 16 --man --seed 1
run infopro-seed1 --rule infopro --k 16 --seed 1
run infopro-man-seed1 --rule infopro --k 16 --man --seed 1
"${manml[@]}" summarize --runs "$out"/*/ > "$out/summary.md"
