// torchvision's ImageNet ResNets and ResNeXts (resnet.py): a 7x7 stride-2 stem with a 3x3 stride-2 max-pool, four
// stages of BasicBlocks (ResNet-18/34) or Bottlenecks (ResNet-50/101/152, ResNeXt) at 64/128/256/512 base width,
// projection shortcuts where the shape changes, the stride on the 3x3 convolution (ResNet v1.5), then global average
// pooling and a linear layer. The reference MAN/InfoPro ImageNet code builds exactly these (docs/REFERENCE.md §6.1).
// As a chain of units: the stem, then every block in order.
using TorchSharp.Modules;
using Man.ML.Backend;

namespace Man.ML.Models;

/// <summary>
/// Bottleneck block (torchvision v1.5): conv1x1 → BN → ReLU → conv3x3(stride, groups) → BN → ReLU → conv1x1 (×4) → BN,
/// plus the shortcut (identity, or 1x1 conv + BN where the shape changes), then ReLU.
/// </summary>
internal sealed class Bottleneck : nn.Module<Tensor, Tensor>, IHasCost
{
    /// <summary>Output channels per base width.</summary>
    public const int Expansion = 4;

    // torchvision's names, registered in this order (the state dict's and the optimizer's order).
    private readonly Conv2dLayer conv1; // 1x1, to the base width
    private readonly BatchNormLayer bn1;
    private readonly Conv2dLayer conv2; // 3x3, with the stride and the groups
    private readonly BatchNormLayer bn2;
    private readonly Conv2dLayer conv3; // 1x1, to the expanded width
    private readonly BatchNormLayer bn3;
    private readonly Sequential? downsample;

    /// <summary>Input channels.</summary>
    public int InChannels { get; }

    /// <summary>Width of the inner 3x3 convolution.</summary>
    public int Width { get; }

    /// <summary>Output channels (base width × 4).</summary>
    public int OutChannels { get; }

    /// <summary>Stride of the 3x3 convolution (and of the projection shortcut).</summary>
    public int Stride { get; }

    /// <summary>Groups of the 3x3 convolution (32 for ResNeXt, 1 for ResNet).</summary>
    public int Groups { get; }

    /// <summary>Whether the shortcut is a projection rather than the identity.</summary>
    public bool HasProjection => downsample is not null;

    /// <summary>Creates a bottleneck.</summary>
    /// <param name="inChannels">Input channels.</param>
    /// <param name="planes">Base width; the block outputs 4 × planes channels.</param>
    /// <param name="stride">Stride of the 3x3 convolution.</param>
    /// <param name="groups">Groups of the 3x3 convolution.</param>
    /// <param name="widthPerGroup">Channels per group at base width 64 (64 for ResNet, 8 for ResNeXt 32x8d).</param>
    public Bottleneck(int inChannels, int planes, int stride, int groups = 1, int widthPerGroup = 64) : base(nameof(Bottleneck))
    {
        InChannels = inChannels;
        Width = planes * widthPerGroup / 64 * groups;
        OutChannels = planes * Expansion;
        Stride = stride;
        Groups = groups;
        conv1 = new Conv2dLayer(inChannels, Width, 1, bias: false);
        bn1 = BatchNormLayer.TwoDimensional(Width);
        conv2 = new Conv2dLayer(Width, Width, 3, stride: stride, padding: 1, groups: groups, bias: false);
        bn2 = BatchNormLayer.TwoDimensional(Width);
        conv3 = new Conv2dLayer(Width, OutChannels, 1, bias: false);
        bn3 = BatchNormLayer.TwoDimensional(OutChannels);
        if (stride != 1 || inChannels != OutChannels)
            downsample = nn.Sequential(new Conv2dLayer(inChannels, OutChannels, 1, stride: stride, bias: false), BatchNormLayer.TwoDimensional(OutChannels));
        RegisterComponents();
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = bn1.call(conv1.call(x)).relu_();                 // (B, width, H, W)
        h = bn2.call(conv2.call(h)).relu_();                     // (B, width, H/s, W/s)
        h = bn3.call(conv3.call(h));                             // (B, 4·planes, H/s, W/s)
        var identity = downsample is null ? x : downsample.call(x);
        return h.PlusInPlace(identity).relu_().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Keeps its input (conv1, projection), conv1's output and ReLU output, conv2's output and ReLU output, conv3's
    /// output, the projection conv's output and the final ReLU's output.
    /// </summary>
    public ModuleCost Cost(FeatureShape input)
    {
        var inner = new FeatureShape(Width, input.Height, input.Width);
        var strided = LayerCost.ConvOutput(inner, Width, 3, Stride, 1);
        var output = new FeatureShape(OutChannels, strided.Height, strided.Width);
        long flops = LayerCost.ConvFlops(input, inner, 1) + LayerCost.ConvFlops(inner, strided, 3, Groups)
                     + LayerCost.ConvFlops(strided, output, 1) + (HasProjection ? LayerCost.ConvFlops(input, output, 1) : 0);
        long saved = 2 * inner.Elements + 2 * strided.Elements + (HasProjection ? 3 : 2) * output.Elements;
        return new ModuleCost(output, input.Elements, saved, true, flops);
    }
}

/// <summary>An ImageNet ResNet or ResNeXt (torchvision layout) as a chain of 1 + Σ blocks units plus a pooled linear head.</summary>
internal sealed class ImageNetResNet : UnitChainNetwork
{
    private static readonly int[] StagePlanes = { 64, 128, 256, 512 };

    private readonly ModuleList<nn.Module<Tensor, Tensor>> units;
    private readonly PooledLinearHead head;
    private readonly List<UnitInfo> infos = new();
    private readonly List<nn.Module<Tensor, Tensor>> unitView = new();
    private readonly List<Func<nn.Module<Tensor, Tensor>>> factories = new();

    /// <inheritdoc />
    public override string Architecture { get; }

    /// <inheritdoc />
    public override NetworkFamily Family => NetworkFamily.ImageNet;

    /// <inheritdoc />
    public override nn.Module<Tensor, Tensor> Head => head;

    /// <summary>Blocks per stage, for example 3, 4, 23, 3 for ResNet-101.</summary>
    public IReadOnlyList<int> BlocksPerStage { get; }

    /// <summary>Creates the network.</summary>
    /// <param name="architecture">Its name (resnet101, resnext101_32x8d, ...).</param>
    /// <param name="blocks">Blocks in each of the four stages.</param>
    /// <param name="bottleneck">Bottleneck blocks (true) or BasicBlocks (false).</param>
    /// <param name="groups">Groups of the bottleneck's 3x3 convolution.</param>
    /// <param name="widthPerGroup">Channels per group at base width 64.</param>
    /// <param name="classes">Number of classes (1000 for ImageNet).</param>
    /// <param name="imageSize">Side of the square input (224 for ImageNet; at least 32).</param>
    public ImageNetResNet(string architecture, int[] blocks, bool bottleneck, int groups = 1, int widthPerGroup = 64,
        int classes = 1000, int imageSize = 224) : base(architecture)
    {
        if (blocks.Length != 4 || blocks.Any(b => b < 1))
            throw new ArgumentException("An ImageNet ResNet has four stages of at least one block.", nameof(blocks));
        if (classes < 2) throw new ArgumentOutOfRangeException(nameof(classes), classes, "At least two classes are needed.");
        if (imageSize < 32)
            throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, "ImageNet networks need images of at least 32 pixels (the stride is 32).");
        Architecture = architecture;
        ClassCount = classes;
        InputShape = new FeatureShape(3, imageSize, imageSize);
        BlocksPerStage = blocks;

        units = new ModuleList<nn.Module<Tensor, Tensor>>();
        Add(() => ConvStem.ImageNet(3, 64), "stem", 0, InputShape);
        int inChannels = 64;
        for (int stage = 0; stage < 4; stage++)
        {
            for (int i = 0; i < blocks[stage]; i++)
            {
                int stride = stage > 0 && i == 0 ? 2 : 1;
                int planes = StagePlanes[stage], input = inChannels;
                Func<nn.Module<Tensor, Tensor>> factory = bottleneck
                    ? () => new Bottleneck(input, planes, stride, groups, widthPerGroup)
                    : () => new BasicBlock(input, planes, stride);
                Add(factory, $"layer{stage + 1}[{i}]", stage + 1, infos[^1].Output);
                inChannels = infos[^1].Output.Channels;
            }
        }
        unitView.AddRange(units);
        head = new PooledLinearHead(inChannels, classes);
        (Units, UnitInfos) = (unitView, infos);
        RegisterComponents();
        Initialization.ApplyReference(this);
    }

    private void Add(Func<nn.Module<Tensor, Tensor>> factory, string name, int stage, FeatureShape input)
    {
        var unit = factory();
        var cost = ((IHasCost)unit).Cost(input);
        units.Add(unit);
        factories.Add(factory);
        infos.Add(new UnitInfo(infos.Count, name, stage, input, cost.Output, cost.SavedInput + cost.SavedInternal));
    }

    /// <summary>ResNet-18 (11.7 M parameters for 1000 classes).</summary>
    public static ImageNetResNet ResNet18(int classes = 1000, int imageSize = 224) =>
        new("resnet18", new[] { 2, 2, 2, 2 }, false, classes: classes, imageSize: imageSize);

    /// <summary>ResNet-34 (21.8 M parameters).</summary>
    public static ImageNetResNet ResNet34(int classes = 1000, int imageSize = 224) =>
        new("resnet34", new[] { 3, 4, 6, 3 }, false, classes: classes, imageSize: imageSize);

    /// <summary>ResNet-50 (25.6 M parameters).</summary>
    public static ImageNetResNet ResNet50(int classes = 1000, int imageSize = 224) =>
        new("resnet50", new[] { 3, 4, 6, 3 }, true, classes: classes, imageSize: imageSize);

    /// <summary>ResNet-101 (44.5 M parameters).</summary>
    public static ImageNetResNet ResNet101(int classes = 1000, int imageSize = 224) =>
        new("resnet101", new[] { 3, 4, 23, 3 }, true, classes: classes, imageSize: imageSize);

    /// <summary>ResNet-152 (60.2 M parameters).</summary>
    public static ImageNetResNet ResNet152(int classes = 1000, int imageSize = 224) =>
        new("resnet152", new[] { 3, 8, 36, 3 }, true, classes: classes, imageSize: imageSize);

    /// <summary>ResNeXt-50 32x4d (25.0 M parameters).</summary>
    public static ImageNetResNet ResNeXt50_32x4d(int classes = 1000, int imageSize = 224) =>
        new("resnext50_32x4d", new[] { 3, 4, 6, 3 }, true, 32, 4, classes, imageSize);

    /// <summary>ResNeXt-101 32x8d (88.8 M parameters).</summary>
    public static ImageNetResNet ResNeXt101_32x8d(int classes = 1000, int imageSize = 224) =>
        new("resnext101_32x8d", new[] { 3, 4, 23, 3 }, true, 32, 8, classes, imageSize);

    /// <inheritdoc />
    public override nn.Module<Tensor, Tensor> CreateUnitLike(int index)
    {
        if (index < 0 || index >= units.Count) throw new ArgumentOutOfRangeException(nameof(index));
        var unit = factories[index]();
        Initialization.ApplyReference(unit);
        return ApplyWorkaroundTo(unit); // the network's convolution policy
    }
}
