#!/usr/bin/env python3
"""Man.ML's end-to-end CIFAR ResNet-32 training step against the PyTorch baseline (scripts/pytorch_baseline.py), in one run
on one machine: the two alternate, one process each per round, and the table gives each side's median of per-process
medians and the ratio of images/s (Man.ML / PyTorch). These machines are noisy; compare only figures from one run.

    python3 scripts/speed_vs_pytorch.py [--rounds 5] [--steps 10] [--warmup 3] [--threads 2] [--batch-size 128]

Needs Debian's python3-torch (or any PyTorch) for the baseline and a Release build of the samples
(dotnet build Man.ML.Samples -c Release) for `manml measure-speed`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANML = os.path.join(ROOT, "Man.ML.Samples", "bin", "Release", "net10.0", "manml.dll")


def last_json(output):
    return json.loads(output.strip().splitlines()[-1])


def pytorch(args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "pytorch_baseline.py"), "--threads", str(args.threads),
                          "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                         check=True, capture_output=True, text=True).stdout
    return statistics.median(last_json(out)["step_ms"])


def manml(args, env=None):
    out = subprocess.run(["dotnet", MANML, "measure-speed", "--arch", "resnet32", "--k", "1", "--rule", "e2e", "--threads", str(args.threads),
                          "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                         check=True, capture_output=True, text=True, env={**os.environ, **(env or {})}).stdout
    return statistics.median(last_json(out)["step_ms"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--heap-tuning-off", action="store_true", help="also time Man.ML with MANML_HEAP_TUNING=off")
    args = parser.parse_args()
    if not os.path.exists(MANML):
        sys.exit(f"{MANML} does not exist: build it with 'dotnet build Man.ML.Samples -c Release' first.")
    sides = {"PyTorch (baseline)": [], "Man.ML": []}
    if args.heap_tuning_off:
        sides["Man.ML, heap tuning off"] = []
    for r in range(args.rounds):
        sides["PyTorch (baseline)"].append(pytorch(args))
        sides["Man.ML"].append(manml(args))
        if args.heap_tuning_off:
            sides["Man.ML, heap tuning off"].append(manml(args, {"MANML_HEAP_TUNING": "off"}))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in sides.items()), file=sys.stderr)
    base = statistics.median(sides["PyTorch (baseline)"])
    print(f"E2E CIFAR ResNet-32 training step, batch {args.batch_size}, {args.threads} threads, {args.rounds} alternating rounds "
          f"of {args.steps} timed steps after {args.warmup} warm-ups (median of per-process medians)\n")
    print("| side | median ms/step | per-process medians (ms) | images/s | vs PyTorch |")
    print("|---|---|---|---|---|")
    for name, values in sides.items():
        m = statistics.median(values)
        print(f"| {name} | {m:.1f} | {' / '.join(f'{v:.0f}' for v in values)} | {args.batch_size / (m / 1000):.1f} | {base / m:.2f} |")


if __name__ == "__main__":
    main()
