"""The CIFAR ResNet of depth 6n+2 in PyTorch, as Man.ML's CifarResNet builds it and with the names Man.ML's state dicts
give it (docs/INTEROP.md): conv1 (3x3, 16 channels, no bias), bn1, three stages layer1..3 of n BasicBlocks at 16/32/64
channels (conv1, bn1, conv2, bn2, and a 1x1 projection downsample.0 with batch norm downsample.1 where the shape
changes), global average pooling and fc. Shared by pytorch_interop.py and pytorch_baseline.py."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class CifarBlock(nn.Module):
    def __init__(self, inp, out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """Depth 6n+2: conv3x3-16, three stages of n BasicBlocks at 16/32/64 channels, projection shortcuts, pooled fc."""

    def __init__(self, depth, classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        inp = 16
        for stage, width in enumerate([16, 32, 64]):
            blocks = []
            for i in range(n):
                blocks.append(CifarBlock(inp, width, 2 if stage > 0 and i == 0 else 1))
                inp = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
