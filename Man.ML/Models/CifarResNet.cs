// CIFAR ResNets of depth 6n+2 (ResNet-32: n=5, ResNet-110: n=18) as in He et al. 2016 and the InfoPro/MAN reference
// code: a 3x3 stem without max-pool, three stages of n BasicBlocks at 16/32/64 channels, projection shortcuts
// (1x1 conv + BN, "option B") where the shape changes, then global average pooling and a linear layer.
// Laid out after torchvision's resnet.py: small helpers, blocks that state their shape, one initialisation loop.
using TorchSharp.Modules;
using Man.ML.Backend;

namespace Man.ML.Models;

/// <summary>
/// Residual BasicBlock: conv3x3(stride) → BN → ReLU → conv3x3 → BN, plus the shortcut (identity, or 1x1 conv + BN
/// when stride or width changes), then ReLU.
/// </summary>
internal sealed class BasicBlock : nn.Module<Tensor, Tensor>, IHasCost
{
    /// <summary>Output channels per width unit (1 for BasicBlock).</summary>
    public const int Expansion = 1;

    private readonly Conv2dLayer conv1;
    private readonly BatchNormLayer bn1;
    private readonly Conv2dLayer conv2;
    private readonly BatchNormLayer bn2;
    private readonly Sequential? downsample;

    /// <summary>Input channels.</summary>
    public int InChannels { get; }

    /// <summary>Output channels.</summary>
    public int OutChannels { get; }

    /// <summary>Stride of the first convolution (and of the projection shortcut).</summary>
    public int Stride { get; }

    /// <summary>Whether the shortcut is a projection (1x1 conv + BN) rather than the identity.</summary>
    public bool HasProjection => downsample is not null;

    /// <summary>Creates a block from <paramref name="inChannels"/> to <paramref name="outChannels"/>.</summary>
    public BasicBlock(int inChannels, int outChannels, int stride) : base(nameof(BasicBlock))
    {
        InChannels = inChannels;
        OutChannels = outChannels;
        Stride = stride;
        conv1 = CifarResNet.Conv3x3(inChannels, outChannels, stride);
        bn1 = BatchNormLayer.TwoDimensional(outChannels);
        conv2 = CifarResNet.Conv3x3(outChannels, outChannels, 1);
        bn2 = BatchNormLayer.TwoDimensional(outChannels);
        if (stride != 1 || inChannels != outChannels)
            downsample = nn.Sequential(CifarResNet.Conv1x1(inChannels, outChannels, stride), BatchNormLayer.TwoDimensional(outChannels));
        RegisterComponents();
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        // A scope per block: intermediate handles die here; autograd keeps what backward needs by itself.
        using var scope = NewDisposeScope();
        var h = bn1.call(conv1.call(x)).relu_();          // (B, out, H/s, W/s)
        h = bn2.call(conv2.call(h));
        var identity = downsample is null ? x : downsample.call(x);
        return h.PlusInPlace(identity).relu_().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Keeps its input (conv1 and the projection), conv1's output (BN1's input), the ReLU output (conv2's input), conv2's
    /// output (BN2's input), the projection conv's output (its BN's input) and the final ReLU's output.
    /// </summary>
    public ModuleCost Cost(FeatureShape input)
    {
        var output = LayerCost.ConvOutput(input, OutChannels, 3, Stride, 1);
        long flops = LayerCost.ConvFlops(input, output, 3) + LayerCost.ConvFlops(output, output, 3)
                     + (HasProjection ? LayerCost.ConvFlops(input, output, 1) : 0);
        return new ModuleCost(output, input.Elements, (HasProjection ? 5 : 4) * output.Elements, true, flops);
    }
}

/// <summary>Classification head: global average pooling, flatten, linear.</summary>
internal sealed class PooledLinearHead : nn.Module<Tensor, Tensor>, IHasCost
{
    private readonly LinearLayer fc;

    /// <summary>Creates a head from <paramref name="channels"/> features to <paramref name="classes"/> logits.</summary>
    public PooledLinearHead(int channels, int classes) : base(nameof(PooledLinearHead))
    {
        fc = new LinearLayer(channels, classes);
        RegisterComponents();
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var pooled = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1); // (B, C)
        return fc.call(pooled).MoveToOuterDisposeScope();                // (B, classes)
    }

    /// <summary>Keeps the pooled features (the linear layer's input) and the logits' softmax (cross-entropy).</summary>
    public ModuleCost Cost(FeatureShape input)
    {
        long classes = fc.OutFeatures;
        return new ModuleCost(new FeatureShape((int)classes, 1, 1), 0, input.Channels + classes, false,
            LayerCost.LinearFlops(input.Channels, classes));
    }
}

/// <summary>A CIFAR ResNet of depth 6n+2, as a chain of 1 + 3n units plus a pooled linear head.</summary>
internal sealed class CifarResNet : UnitChainNetwork
{
    private static readonly int[] StageWidths = { 16, 32, 64 };

    private readonly ModuleList<nn.Module<Tensor, Tensor>> units;
    private readonly PooledLinearHead head;
    private readonly List<UnitInfo> infos = new();
    private readonly List<nn.Module<Tensor, Tensor>> unitView = new();
    private readonly int[] blockStrides;

    /// <summary>Depth 6n+2.</summary>
    public int Depth { get; }

    /// <summary>BasicBlocks per stage (n).</summary>
    public int BlocksPerStage { get; }

    /// <inheritdoc />
    public override string Architecture => $"resnet{Depth}";

    /// <inheritdoc />
    public override nn.Module<Tensor, Tensor> Head => head;

    /// <summary>Creates a CIFAR ResNet of the given depth.</summary>
    /// <param name="depth">6n+2 with n ≥ 1: 8, 14, 20, 32, 44, 56, 110, ...</param>
    /// <param name="classes">Number of classes.</param>
    /// <param name="imageSize">Side of the square input image (32 for CIFAR/SVHN, 96 for STL-10).</param>
    public CifarResNet(int depth, int classes = 10, int imageSize = 32) : base($"resnet{depth}")
    {
        if (depth < 8 || (depth - 2) % 6 != 0)
            throw new ArgumentOutOfRangeException(nameof(depth), depth, "A CIFAR ResNet has depth 6n+2 with n ≥ 1 (8, 14, 20, 32, 44, 56, 110, ...).");
        if (classes < 2) throw new ArgumentOutOfRangeException(nameof(classes), classes, "At least two classes are needed.");
        if (imageSize < 8) throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, "Images must be at least 8 pixels wide.");
        Depth = depth;
        BlocksPerStage = (depth - 2) / 6;
        ClassCount = classes;
        InputShape = new FeatureShape(3, imageSize, imageSize);

        units = new ModuleList<nn.Module<Tensor, Tensor>>();
        var strides = new List<int>();
        units.Add(ConvStem.Cifar(3, StageWidths[0]));
        var shape = new FeatureShape(StageWidths[0], imageSize, imageSize);
        var stemCost = ((ConvStem)units[0]).Cost(InputShape);
        infos.Add(new UnitInfo(0, "stem", 0, InputShape, shape, stemCost.SavedInput + stemCost.SavedInternal));
        int inChannels = StageWidths[0];
        for (int stage = 0; stage < 3; stage++)
        {
            for (int i = 0; i < BlocksPerStage; i++)
            {
                int stride = (stage > 0 && i == 0) ? 2 : 1;
                int outChannels = StageWidths[stage];
                var block = new BasicBlock(inChannels, outChannels, stride);
                units.Add(block);
                strides.Add(stride);
                var cost = block.Cost(shape);
                var output = cost.Output;
                // The block's own tensors plus its input (the previous unit keeps that one too; it only weighs the split).
                infos.Add(new UnitInfo(units.Count - 1, $"layer{stage + 1}[{i}]", stage + 1, shape, output, cost.SavedInput + cost.SavedInternal));
                shape = output;
                inChannels = outChannels;
            }
        }
        blockStrides = strides.ToArray();
        unitView.AddRange(units);
        head = new PooledLinearHead(inChannels, classes);
        (Units, UnitInfos) = (unitView, infos);
        RegisterComponents();
        Initialization.ApplyReference(this);
    }

    /// <summary>ResNet-32 (n = 5, 0.46 M parameters for 10 classes).</summary>
    public static CifarResNet ResNet32(int classes = 10, int imageSize = 32) => new(32, classes, imageSize);

    /// <summary>ResNet-110 (n = 18, 1.7 M parameters for 10 classes).</summary>
    public static CifarResNet ResNet110(int classes = 10, int imageSize = 32) => new(110, classes, imageSize);

    /// <inheritdoc />
    public override nn.Module<Tensor, Tensor> CreateUnitLike(int index)
    {
        if (index < 0 || index >= units.Count) throw new ArgumentOutOfRangeException(nameof(index));
        nn.Module<Tensor, Tensor> unit;
        if (index == 0)
            unit = ConvStem.Cifar(3, StageWidths[0]);
        else
        {
            var info = infos[index];
            unit = new BasicBlock(info.Input.Channels, info.Output.Channels, blockStrides[index - 1]);
        }
        Initialization.ApplyReference(unit);
        return ApplyWorkaroundTo(unit); // the network's convolution policy
    }

    internal static Conv2dLayer Conv3x3(int inChannels, int outChannels, int stride) =>
        new(inChannels, outChannels, kernelSize: 3, stride: stride, padding: 1, bias: false);

    internal static Conv2dLayer Conv1x1(int inChannels, int outChannels, int stride) =>
        new(inChannels, outChannels, kernelSize: 1, stride: stride, bias: false);
}
