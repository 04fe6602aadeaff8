#!/usr/bin/env python3
"""Man.ML's end-to-end CIFAR ResNet-32 training step against the PyTorch baseline (scripts/pytorch_baseline.py), in one run
on one machine: the two alternate, one process each per round, and the table gives each side's median of per-process
medians and the ratio of images/s (Man.ML / PyTorch). These machines are noisy; compare only figures from one run.

    python3 scripts/speed_vs_pytorch.py [--rounds 5] [--steps 10] [--warmup 3] [--threads 2] [--batch-size 128]
        [--local dgl-k16-man infopro-k16-man] [--precision fp32|bf16|bf16-emulated]

With --precision bf16 both sides train in bf16 mixed precision: the baseline under torch.autocast("cpu",
dtype=torch.bfloat16), Man.ML with --precision bf16 (refused on a CPU without avx512_bf16 or amx_bf16 unless
MANML_BF16_ANY_CPU=1 is set, to time libtorch's slow fallback kernels there). bf16-emulated times Man.ML's emulation
against the float32 baseline.

With --local, Man.ML's local-learning configurations (RULE-kK[-man], ResNet-32) join the alternation, and a second table
gives each one's achieved GFLOP/s (the cost model's matrix FLOPs of a step over its median time) against Man.ML's
end-to-end step measured in the same rounds. InfoPro runs with both loss terms in every segment (lambda 5,0.5,1,0.5 by
module index), as `manml-lab bench` does, so that every head's work is timed.

Needs Debian's python3-torch (or any PyTorch) for the baseline and a Release build of the lab tools
(dotnet build Man.ML.Lab -c Release) for `manml-lab measure-speed`.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANML = os.path.join(ROOT, "Man.ML.Lab", "bin", "Release", "net10.0", "manml-lab.dll")
PEAKS = []  # the peak matrix rate each Man.ML process measured after its steps


def last_json(output):
    return json.loads(output.strip().splitlines()[-1])


def pytorch(args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "pytorch_baseline.py"), "--threads", str(args.threads),
                          "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
                          "--precision", "bf16" if args.precision == "bf16" else "fp32"],
                         check=True, capture_output=True, text=True).stdout
    return statistics.median(last_json(out)["step_ms"])


def manml(args, env=None, config=None):
    """Median step ms (and the step's GFLOP) of Man.ML's E2E ResNet-32, or of a local configuration RULE-kK[-man]."""
    model = ["--k", "1", "--rule", "e2e", "--no-man"]
    if config is not None:
        m = re.fullmatch(r"(dgl|infopro|predsim)-k(\d+)(-man)?", config)
        if m is None:
            sys.exit(f"--local {config}: expected RULE-kK[-man], for example dgl-k16-man")
        model = ["--k", m.group(2), "--rule", m.group(1), "--man" if m.group(3) else "--no-man"]
        if m.group(1) == "infopro":
            model += ["--lambda", "5,0.5,1,0.5", "--lambda-schedule", "module"]
    out = subprocess.run(["dotnet", MANML, "measure-speed", "--arch", "resnet32", *model, "--threads", str(args.threads),
                          "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
                          "--precision", args.precision],
                         check=True, capture_output=True, text=True, env={**os.environ, **(env or {})}).stdout
    result = last_json(out)
    PEAKS.append(result["peak_matrix_gflops"])
    return statistics.median(result["step_ms"]), result["gflop_per_step"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--heap-tuning-off", action="store_true", help="also time Man.ML with MANML_HEAP_TUNING=off")
    parser.add_argument("--local", nargs="*", default=[], metavar="RULE-kK[-man]", help="local-learning configurations to time too")
    parser.add_argument("--no-pytorch", action="store_true", help="leave the PyTorch baseline out (local against E2E only)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "bf16-emulated"], default="fp32",
                        help="training precision of both sides (bf16: torch.autocast for the baseline)")
    args = parser.parse_args()
    if not os.path.exists(MANML):
        sys.exit(f"{MANML} does not exist: build it with 'dotnet build Man.ML.Lab -c Release' first.")
    sides = {} if args.no_pytorch else {"PyTorch (baseline)": []}
    sides["Man.ML"] = []
    if args.heap_tuning_off:
        sides["Man.ML, heap tuning off"] = []
    for config in args.local:
        sides[config] = []
    gflop = {}
    for r in range(args.rounds):
        if not args.no_pytorch:
            sides["PyTorch (baseline)"].append(pytorch(args))
        ms, gflop["Man.ML"] = manml(args)
        sides["Man.ML"].append(ms)
        if args.heap_tuning_off:
            sides["Man.ML, heap tuning off"].append(manml(args, {"MANML_HEAP_TUNING": "off"})[0])
        for config in args.local:
            ms, gflop[config] = manml(args, config=config)
            sides[config].append(ms)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in sides.items()), file=sys.stderr)
    print(f"CIFAR ResNet-32 training step in {args.precision}, batch {args.batch_size}, {args.threads} threads, {args.rounds} alternating rounds "
          f"of {args.steps} timed steps after {args.warmup} warm-ups (median of per-process medians)\n")
    if not args.no_pytorch:
        base = statistics.median(sides["PyTorch (baseline)"])
        print("| side | median ms/step | per-process medians (ms) | images/s | vs PyTorch |")
        print("|---|---|---|---|---|")
        for name, values in sides.items():
            if name in args.local:
                continue
            m = statistics.median(values)
            print(f"| {name} | {m:.1f} | {' / '.join(f'{v:.0f}' for v in values)} | {args.batch_size / (m / 1000):.1f} | {base / m:.2f} |")
    e2e = gflop["Man.ML"] / (statistics.median(sides["Man.ML"]) / 1000)
    peak = statistics.median(PEAKS)
    print(f"\nMan.ML's E2E step: {e2e:.1f} GFLOP/s, {e2e / peak:.2f} of the peak matrix rate ({peak:.1f} GFLOP/s, median of the "
          f"{len(PEAKS)} Man.ML processes: {min(PEAKS):.1f}-{max(PEAKS):.1f})")
    if args.local:
        print("\n| configuration | median ms/step | per-process medians (ms) | images/s | GFLOP/step | GFLOP/s | vs E2E's GFLOP/s |")
        print("|---|---|---|---|---|---|---|")
        for name in ["Man.ML", *args.local]:
            m = statistics.median(sides[name])
            rate = gflop[name] / (m / 1000)
            label = "E2E (Man.ML)" if name == "Man.ML" else name
            print(f"| {label} | {m:.1f} | {' / '.join(f'{v:.0f}' for v in sides[name])} | {args.batch_size / (m / 1000):.1f} | "
                  f"{gflop[name]:.2f} | {rate:.1f} | {rate / e2e:.2f} |")


if __name__ == "__main__":
    main()
