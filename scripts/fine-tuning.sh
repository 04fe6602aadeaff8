#!/usr/bin/env bash
# The pretrained-start measurement of issue 30 (docs/RESULTS.md §3): no ImageNet weights can be downloaded here, so a
# ResNet-18 is pretrained end to end on five CIFAR-10 classes (airplane, automobile, bird, cat, deer: all 25,000 of
# their training images, 2,500 held out) and fine-tuned on the other five classes (dog, frog, horse, ship, truck) of the
# image-folder sample (100 training and 20 validation images per class), against the same runs from scratch.
# The two sets share no class, so the fine-tuning images are never seen in pretraining.
# Usage: MANML_CIFAR10=DIR MANML_CIFAR10_IMAGES=DIR scripts/fine-tuning.sh OUT_DIR [MANML_COMMAND...]
set -euo pipefail
out=${1:?usage: fine-tuning.sh OUT_DIR [manml command]}
shift
manml=("$@")
[ ${#manml[@]} -eq 0 ] && manml=(dotnet run --project Man.ML.Samples -c Release --)
: "${MANML_CIFAR10:?set MANML_CIFAR10 to a folder holding CIFAR-10's data_batch_*.bin (docs/DATA.md)}"
: "${MANML_CIFAR10_IMAGES:?set MANML_CIFAR10_IMAGES to the image-folder sample (train/ and val/ of class folders)}"
mkdir -p "$out/folder/train" "$out/folder/val"

# Five classes of the training split, in CIFAR-10's binary record layout (label byte + 3,072 pixel bytes).
python3 - "$MANML_CIFAR10" "$out/pretrain5.bin" <<'PY'
import sys
src, dst = sys.argv[1], sys.argv[2]
with open(dst, "wb") as out:
    for i in range(1, 6):
        data = open(f"{src}/data_batch_{i}.bin", "rb").read()
        for r in range(len(data) // 3073):
            record = data[r * 3073:(r + 1) * 3073]
            if record[0] < 5:
                out.write(record)
PY
for c in dog frog horse ship truck; do
  ln -sfn "$(realpath "$MANML_CIFAR10_IMAGES/train/$c")" "$out/folder/train/$c"
  ln -sfn "$(realpath "$MANML_CIFAR10_IMAGES/val/$c")" "$out/folder/val/$c"
done

# Pretraining: end to end, as torchvision's ImageNet weights were trained; written with torchvision's names.
"${manml[@]}" train --dataset cifar10 --data "$out/pretrain5.bin" --val-split 2500 --arch resnet18 --k 1 --rule e2e --no-man \
  --epochs 10 --batch-size 128 --seed 0 --out "$out/pretrain" > "$out/pretrain.log" 2>&1
"${manml[@]}" export weights --model "$out/pretrain/model.ckpt" --out "$out/resnet18-5class.pth" > /dev/null

# Fine-tuning against scratch: same recipe, budget and seeds; the pretrained runs start from the file above.
run() { # NAME SEED ARGS...
  local name=$1 seed=$2; shift 2
  "${manml[@]}" image-folder --images "$out/folder" --arch resnet18 --image-size 32 --recipe cifar --normalization cifar \
    --epochs 15 --batch-size 32 --seed "$seed" "$@" --out "$out/$name-$seed" > "$out/$name-$seed.log" 2>&1
  echo "$name seed $seed: $(grep -o 'micro-accuracy [^,]*' "$out/$name-$seed.log")"
}
for seed in 0 1; do
  run pretrained "$seed" --k 2 --init-from "$out/resnet18-5class.pth"
  run scratch "$seed" --k 2
  run pretrained-lr0.0025 "$seed" --k 2 --lr 0.0025 --init-from "$out/resnet18-5class.pth"
  run scratch-lr0.0025 "$seed" --k 2 --lr 0.0025
  run pretrained-k4 "$seed" --k 4 --init-from "$out/resnet18-5class.pth"
  run scratch-k4 "$seed" --k 4
  run pretrained-e2e "$seed" --k 1 --rule e2e --without-man --init-from "$out/resnet18-5class.pth"
  run scratch-e2e "$seed" --k 1 --rule e2e --without-man
done
