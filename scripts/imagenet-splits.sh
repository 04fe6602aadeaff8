#!/usr/bin/env bash
# Every ImageNet backbone with every reference split, trained for one short epoch by `manml train` on ImageNet-layout
# data (default: $MANML_CIFAR10_IMAGES, a folder with train/<class>/ and val/<class>/; docs/DATA.md), at a small input size.
# Usage: scripts/imagenet-splits.sh [DATA] [OUT]   (prints one line per run: arch, split, rule, val top-1/top-5, seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${MANML_CIFAR10_IMAGES:-}}
if [ -z "$DATA" ]; then
  echo "imagenet-splits.sh: give DATA (a folder with train/<class>/ and val/<class>/) or set MANML_CIFAR10_IMAGES (see docs/DATA.md)" >&2; exit 2
fi
if [ ! -d "$DATA/train" ]; then
  echo "imagenet-splits.sh: $DATA has no train/ folder (see docs/DATA.md)" >&2; exit 2
fi
OUT=${2:-/tmp/imagenet-splits}
dotnet build Man.ML.Samples -c Release -v q > /dev/null
MANML="dotnet Man.ML.Samples/bin/Release/net10.0/manml.dll"
COMMON=(--data "$DATA" --image-size 64 --train-limit 64 --epochs 1 --batch-size 16 --seed 1)
run() { # arch k table rule
  local dir="$OUT/$1-k$2-$3-$4"
  local start=$SECONDS
  $MANML train "${COMMON[@]}" --arch "$1" --k "$2" --split "$3" --rule "$4" --man --out "$dir" > "$dir.log" 2>&1 \
    || { echo "FAILED $1 K=$2 $3 $4 (see $dir.log)"; return 1; }
  python3 -c "import json,sys; m=json.load(open('$dir/metrics.json')); f=m['final']; c=m['config']; print(f\"$1 K=$2 {c['split_table']}: {c['split']} | rule $4+MAN | val top-1 {f['val_accuracy']:.3f} top-5 {f['val_top5_accuracy']:.3f} | {f['train_seconds']:.1f} s\")"
  echo "  ($((SECONDS - start)) s with start-up)"
}
mkdir -p "$OUT"
run resnet34 2 man infopro;         run resnet34 4 man infopro
run resnet101 2 man infopro;        run resnet101 4 man infopro;        run resnet101 4 manpp infopro;  run resnet101 2 infopro infopro
run resnet152 2 man infopro;        run resnet152 4 man infopro;        run resnet152 4 manpp infopro;  run resnet152 2 infopro infopro
run resnet152 2 dgl dgl
run resnext101_32x8d 2 man infopro; run resnext101_32x8d 4 man infopro; run resnext101_32x8d 4 manpp infopro; run resnext101_32x8d 2 infopro infopro
run vgg13_bn 10 dgl dgl;            run vgg13_bn 4 dgl dgl
run resnet101 3 balanced infopro;   run vgg13_bn 5 balanced dgl
