#!/usr/bin/env python3
"""Checks that Man.ML computes what PyTorch computes, on the same weights (docs/INTEROP.md).

Run by hand with Debian's python3-torch and python3-torchvision (apt-get install python3-torch python3-torchvision);
no test needs Python. Subcommands:

  torchvision --dir D      torchvision ResNet-18 and ResNet-50 (1000 classes), random init with randomised batch-norm
                           statistics, saved as D/tv_<arch>.pt (torch.save) and D/tv_<arch>.safetensors, with their
                           eval-mode logits on the probe batch at 64x64 in D/tv_<arch>.logits.json.
  compare --dir D          after `manml export-weights --arch A --classes 1000 --image-size 64 --init-from D/tv_A.pt
                           --out D/manml_A.pt --logits-out D/manml_A.logits.json` (and the same from the .safetensors
                           into D/manml_A.safetensors): Man.ML's logits against PyTorch's (softmax, top-1), and Man.ML's
                           files loaded back into torchvision with strict=True, tensor for tensor equal.
  golden --dir D --out F   after `manml export-weights --arch A --classes 10 --image-size S --synthetic-seed 1
                           --out D/golden_A.pt` for resnet18 and resnet50 (S = 64) and resnet32 (S = 32): loads each into
                           torchvision's network (or the CIFAR ResNet below) with strict=True, checks the weights equal
                           this script's own regeneration, and writes eval-mode logits, the train-mode loss and every
                           parameter's gradient norm on the probe batch to F (Man.ML.Tests/Golden/pytorch_golden.json).
  keys --out F             every torchvision architecture Man.ML builds (ResNets, ResNeXts, VGG-BNs; 1000 classes):
                           its state dict's keys and shapes in order (Man.ML.Tests/Golden/torchvision_keys.json).
  cifar-file --out-dir D   a CIFAR ResNet-8 for 100 classes, random init, as D/resnet8_c100.pt and .safetensors: the
                           PyTorch-written files the fine-tuning test starts from.
"""
import argparse
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from cifar_resnet import CifarResNet

PROBE_SIZE = 4
ARCHS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}


# --- the cross-framework generator (Man.ML.Samples/Tooling/InteropProbe.cs) -----------------------------------------

def fnv1a(text):
    h = 14695981039346656037
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def uniform(start, count):
    """splitmix64 of start + i, 53 high bits, to [-1, 1)."""
    with np.errstate(over="ignore"):
        z = np.uint64(start) + np.arange(count, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)) * 2 - 1


def synthetic(seed, key, shape):
    count = int(np.prod(shape)) if len(shape) else 1
    offset = 0.0
    if len(shape) == 4:
        scale = np.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
    elif len(shape) == 2:
        scale = np.sqrt(3.0 / shape[1])
    elif key.endswith(".running_var"):
        scale, offset = 0.5, 1.0
    elif key.endswith(".weight"):
        scale, offset = 0.2, 1.0
    else:
        scale = 0.1
    return (offset + scale * uniform(fnv1a(f"{seed}:{key}"), count)).astype(np.float32).reshape(shape)


def probe_batch(size, classes):
    n, c, h, w = np.meshgrid(np.arange(PROBE_SIZE), np.arange(3), np.arange(size), np.arange(size), indexing="ij")
    x = np.sin(0.9 * n + 1.7 * c + 0.21 * h + 0.13 * w + 0.017 * h * w).astype(np.float32)
    labels = np.array([(3 * i + 1) % classes for i in range(PROBE_SIZE)], dtype=np.int64)
    return torch.from_numpy(x), torch.from_numpy(labels)


def build(arch, classes):
    if arch in ARCHS:
        return ARCHS[arch](num_classes=classes)
    return CifarResNet(int(arch[len("resnet"):]), classes)


# --- safetensors, by hand (Debian has no python3-safetensors) --------------------------------------------------------

DTYPES = {torch.float32: "F32", torch.int64: "I64"}
NUMPY = {"F32": np.float32, "I64": np.int64, "F16": np.float16, "F64": np.float64}


def save_safetensors(state, path):
    header, blobs, offset = {}, [], 0
    for key, t in state.items():
        data = t.detach().cpu().contiguous().numpy().tobytes()
        header[key] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    base = 8 + length
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        array = np.frombuffer(raw[base + start:base + end], dtype=NUMPY[entry["dtype"]]).reshape(entry["shape"])
        out[key] = torch.from_numpy(array.copy())
    return out


def load_any(path):
    return load_safetensors(path) if path.endswith(".safetensors") else torch.load(path, map_location="cpu")


# --- subcommands -----------------------------------------------------------------------------------------------------

def randomise_bn(model, generator):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=generator))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=generator))


def cmd_torchvision(args):
    os.makedirs(args.dir, exist_ok=True)
    for arch in ARCHS:
        torch.manual_seed(0)
        model = build(arch, 1000)
        randomise_bn(model, torch.Generator().manual_seed(1))
        model.eval()
        state = model.state_dict()
        torch.save(state, os.path.join(args.dir, f"tv_{arch}.pt"))
        save_safetensors(state, os.path.join(args.dir, f"tv_{arch}.safetensors"))
        x, _ = probe_batch(64, 1000)
        with torch.no_grad():
            logits = model(x)
        with open(os.path.join(args.dir, f"tv_{arch}.logits.json"), "w") as f:
            json.dump({"arch": arch, "logits": logits.tolist()}, f)
        print(f"{arch}: {len(state)} tensors, {sum(p.numel() for p in model.parameters()):,} parameters written")


def cmd_compare(args):
    failed = False
    print(f"{'arch':10} {'file':12} {'max |Δ softmax|':>16} {'max |Δ logit|':>14} {'top-1 same':>11} {'strict load':>12} {'tensors equal':>14}")
    for arch in ARCHS:
        reference = json.load(open(os.path.join(args.dir, f"tv_{arch}.logits.json")))
        original = torch.load(os.path.join(args.dir, f"tv_{arch}.pt"), map_location="cpu")
        for ext in ["pt", "safetensors"]:
            logits_path = os.path.join(args.dir, f"manml_{arch}.{ext}.logits.json")
            ours = torch.tensor(json.load(open(logits_path))["logits"], dtype=torch.float64)
            theirs = torch.tensor(reference["logits"], dtype=torch.float64)
            dp = (ours.softmax(1) - theirs.softmax(1)).abs().max().item()
            dl = (ours - theirs).abs().max().item()
            same = bool((ours.argmax(1) == theirs.argmax(1)).all())
            model = build(arch, 1000)
            state = load_any(os.path.join(args.dir, f"manml_{arch}.{ext}"))
            model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
            equal = all(torch.equal(state[k].to(original[k].dtype), original[k]) for k in original)
            ok = dp <= 1e-4 and same and equal
            failed |= not ok
            print(f"{arch:10} {ext:12} {dp:16.2e} {dl:14.2e} {str(same):>11} {'ok':>12} {str(equal):>14}")
    sys.exit(1 if failed else 0)


def cmd_golden(args):
    models = [("resnet18", 10, 64), ("resnet50", 10, 64), ("resnet32", 10, 32)]
    out = {"generator": "splitmix64 synthetic weights, seed 1 (docs/INTEROP.md)", "precision": "float64", "torch": torch.__version__,
           "torchvision": torchvision.__version__, "seed": 1, "models": []}
    for arch, classes, size in models:
        model = build(arch, classes)
        state = load_any(os.path.join(args.dir, f"golden_{arch}.pt"))
        model.load_state_dict(state, strict=True)
        for key, t in state.items():
            if t.is_floating_point() and not np.array_equal(t.numpy(), synthetic(1, key, tuple(t.shape))):
                sys.exit(f"{arch}: '{key}' differs from this script's regeneration: the generators disagree")
        # float64 throughout: the reference is the function itself, not one CPU's float32 rounding of it.
        model = model.double()
        x, labels = probe_batch(size, classes)
        x = x.double()
        model.eval()
        with torch.no_grad():
            eval_logits = model(x)
        model.train()
        logits = model(x)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        grads = {name: p.grad.double().norm().item() for name, p in model.named_parameters()}
        out["models"].append({"arch": arch, "classes": classes, "image_size": size, "eval_logits": eval_logits.tolist(),
                              "train_logits": logits.detach().tolist(), "train_loss": loss.item(), "grad_norms": grads})
        print(f"{arch}: loss {loss.item():.6f}, {len(grads)} gradient norms")
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
               "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]


def cmd_keys(args):
    out = {"torchvision": torchvision.__version__, "models": {}}
    for arch in TORCHVISION:
        model = getattr(torchvision.models, arch)(num_classes=1000)
        out["models"][arch] = [[k, list(t.shape)] for k, t in model.state_dict().items()]
        print(f"{arch}: {len(out['models'][arch])} keys")
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


def cmd_cifar_file(args):
    os.makedirs(args.out_dir, exist_ok=True)
    torch.manual_seed(3)
    model = CifarResNet(8, 100)
    randomise_bn(model, torch.Generator().manual_seed(4))
    state = model.state_dict()
    torch.save(state, os.path.join(args.out_dir, "resnet8_c100.pt"))
    save_safetensors(state, os.path.join(args.out_dir, "resnet8_c100.safetensors"))
    x, _ = probe_batch(32, 100)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    with open(os.path.join(args.out_dir, "resnet8_c100.logits.json"), "w") as f:
        json.dump({"arch": "resnet8", "classes": 100, "image_size": 32, "logits": logits.tolist()}, f)
        f.write("\n")
    print(f"resnet8 (100 classes): {len(state)} tensors written")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("torchvision"); p.add_argument("--dir", required=True); p.set_defaults(run=cmd_torchvision)
    p = sub.add_parser("compare"); p.add_argument("--dir", required=True); p.set_defaults(run=cmd_compare)
    p = sub.add_parser("golden"); p.add_argument("--dir", required=True); p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_golden)
    p = sub.add_parser("keys"); p.add_argument("--out", required=True); p.set_defaults(run=cmd_keys)
    p = sub.add_parser("cifar-file"); p.add_argument("--out-dir", required=True); p.set_defaults(run=cmd_cifar_file)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    args.run(args)


if __name__ == "__main__":
    main()
