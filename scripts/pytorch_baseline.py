#!/usr/bin/env python3
"""The PyTorch baseline for Man.ML's speed: one end-to-end training step of a CIFAR ResNet-32 (the same network as
Man.ML's CifarResNet: 3x3 stem of 16 channels, three stages of five BasicBlocks with 16/32/64 channels, 1x1 projection
shortcuts with batch norm where the shape changes, global average pooling and a linear head), trained by SGD with
Nesterov momentum 0.9, weight decay 1e-4 and lr 0.1 on a synthetic batch, timed like `manml-lab measure-speed`.

Prints one JSON line: {"framework": "pytorch", "version": ..., "threads": ..., "batch_size": ..., "step_ms": [...],
"step_ms_median": ..., "images_per_second": ...}. Written for Debian's python3-torch (1.13); any later PyTorch runs it.

    python3 scripts/pytorch_baseline.py --threads 2 --batch-size 128 --steps 10 --warmup 3 [--channels-last] [--precision bf16]

With --precision bf16 the forward pass and the loss run under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's
own mixed precision (bf16 convolutions and linear layers, float32 weights and optimizer; no loss scaling for bf16).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from cifar_resnet import CifarResNet


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations and weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: torch.autocast on the CPU")
    args = parser.parse_args()
    if args.depth < 8 or (args.depth - 2) % 6:
        parser.error(f"--depth must be 6n+2 (got {args.depth})")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = CifarResNet(args.depth, 10)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)

    def step():
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    print(json.dumps({
        "framework": "pytorch", "version": torch.__version__, "threads": torch.get_num_threads(), "depth": args.depth,
        "batch_size": args.batch_size, "channels_last": args.channels_last, "precision": args.precision, "step_ms": [round(t, 1) for t in times],
        "step_ms_median": round(median, 1), "images_per_second": round(args.batch_size / (median / 1000), 1),
    }))


if __name__ == "__main__":
    main()
