// torchvision's VGG with batch norm (vgg.py), cut into units the way DGL's ImageNet code does (docs/REFERENCE.md
// §6.2): one unit per convolution layer (conv 3x3 with bias → BN → ReLU), each max-pool prepended to the following
// convolution's unit; the last max-pool opens the head (pool → 7x7 average pool → 4096 → 4096 → classes). DGL's head
// has no dropout, so neither has this one; the parameter count equals torchvision's (VGG-13-BN: 133,053,736).
using TorchSharp.Modules;

namespace Man.ML.Models;

/// <summary>One VGG unit: an optional 2x2 max-pool, then conv 3x3 (with bias) → BN → ReLU.</summary>
internal sealed class VggLayer : nn.Module<Tensor, Tensor>, IHasCost
{
    private readonly Conv2dLayer conv;
    private readonly BatchNormLayer bn;

    /// <summary>Whether the unit starts with a 2x2 stride-2 max-pool.</summary>
    public bool Pooled { get; }

    /// <summary>Creates a unit from <paramref name="inChannels"/> to <paramref name="outChannels"/>.</summary>
    public VggLayer(int inChannels, int outChannels, bool pooled) : base(nameof(VggLayer))
    {
        Pooled = pooled;
        conv = new Conv2dLayer(inChannels, outChannels, 3, padding: 1);
        bn = BatchNormLayer.TwoDimensional(outChannels);
        RegisterComponents();
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = Pooled ? nn.functional.max_pool2d(x, 2, 2) : x;      // (B, C, H/2, W/2) when pooled
        return bn.call(conv.call(h)).relu_().MoveToOuterDisposeScope(); // (B, out, ., .)
    }

    /// <summary>Keeps its input (max-pool or conv), the pool's int64 indices and output, the conv output and the ReLU output.</summary>
    public ModuleCost Cost(FeatureShape input)
    {
        var pooled = Pooled ? new FeatureShape(input.Channels, input.Height / 2, input.Width / 2) : input;
        var output = conv.OutputShape(pooled);
        long saved = (Pooled ? 3 * pooled.Elements : 0) + 2 * output.Elements;
        return new ModuleCost(output, input.Elements, saved, true, LayerCost.ConvFlops(pooled, output, 3));
    }
}

/// <summary>VGG's classifier: max-pool 2x2, average-pool to 7x7, linear 4096, ReLU, linear 4096, ReLU, linear.</summary>
internal sealed class VggHead : nn.Module<Tensor, Tensor>, IHasCost
{
    private const int Hidden = 4096, Pool = 7;
    private readonly Sequential classifier;
    private readonly int classes;

    /// <summary>Creates the head for <paramref name="channels"/> input channels.</summary>
    public VggHead(int channels, int classes) : base(nameof(VggHead))
    {
        this.classes = classes;
        classifier = nn.Sequential(
            new LinearLayer(channels * Pool * Pool, Hidden), nn.ReLU(inplace: true),
            new LinearLayer(Hidden, Hidden), nn.ReLU(inplace: true),
            new LinearLayer(Hidden, classes));
        RegisterComponents();
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.max_pool2d(x, 2, 2);                             // (B, C, H/2, W/2)
        h = nn.functional.adaptive_avg_pool2d(h, Pool).flatten(1);             // (B, C·49)
        return classifier.call(h).MoveToOuterDisposeScope();                   // (B, classes)
    }

    /// <summary>Keeps the pool's indices and output, the flattened features, both hidden ReLU outputs and the softmax.</summary>
    public ModuleCost Cost(FeatureShape input)
    {
        long pooled = (long)input.Channels * (input.Height / 2) * (input.Width / 2), features = (long)input.Channels * Pool * Pool;
        long flops = LayerCost.LinearFlops(features, Hidden) + LayerCost.LinearFlops(Hidden, Hidden) + LayerCost.LinearFlops(Hidden, classes);
        return new ModuleCost(new FeatureShape(classes, 1, 1), 0, 3 * pooled + features + 2 * Hidden + classes, false, flops);
    }
}

/// <summary>VGG with batch norm (configurations A, B, D, E: VGG-11/13/16/19) as a chain of convolution units plus VGG's head.</summary>
internal sealed class Vgg : UnitChainNetwork
{
    private const int M = 0; // a max-pool in a configuration
    private static readonly Dictionary<int, int[]> Configurations = new()
    {
        [11] = new[] { 64, M, 128, M, 256, 256, M, 512, 512, M, 512, 512, M },
        [13] = new[] { 64, 64, M, 128, 128, M, 256, 256, M, 512, 512, M, 512, 512, M },
        [16] = new[] { 64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M },
        [19] = new[] { 64, 64, M, 128, 128, M, 256, 256, 256, 256, M, 512, 512, 512, 512, M, 512, 512, 512, 512, M },
    };

    private readonly ModuleList<nn.Module<Tensor, Tensor>> units;
    private readonly VggHead head;
    private readonly List<UnitInfo> infos = new();
    private readonly List<nn.Module<Tensor, Tensor>> unitView = new();
    private readonly List<(int In, int Out, bool Pooled)> shapes = new();

    /// <summary>Depth: 11, 13, 16 or 19.</summary>
    public int Depth { get; }

    /// <inheritdoc />
    public override string Architecture => $"vgg{Depth}_bn";

    /// <inheritdoc />
    public override NetworkFamily Family => NetworkFamily.ImageNet;

    /// <inheritdoc />
    public override nn.Module<Tensor, Tensor> Head => head;

    /// <summary>Creates VGG-<paramref name="depth"/> with batch norm.</summary>
    /// <param name="depth">11, 13, 16 or 19.</param>
    /// <param name="classes">Number of classes.</param>
    /// <param name="imageSize">Side of the square input (224 for ImageNet; at least 32).</param>
    public Vgg(int depth, int classes = 1000, int imageSize = 224) : base($"vgg{depth}_bn")
    {
        if (!Configurations.TryGetValue(depth, out var configuration))
            throw new ArgumentOutOfRangeException(nameof(depth), depth, "VGG has depth 11, 13, 16 or 19.");
        if (classes < 2) throw new ArgumentOutOfRangeException(nameof(classes), classes, "At least two classes are needed.");
        if (imageSize < 32) throw new ArgumentOutOfRangeException(nameof(imageSize), imageSize, "VGG needs images of at least 32 pixels (five 2x2 pools).");
        Depth = depth;
        ClassCount = classes;
        InputShape = new FeatureShape(3, imageSize, imageSize);
        units = new ModuleList<nn.Module<Tensor, Tensor>>();
        int inChannels = 3, stage = 1;
        bool pool = false;
        var shape = InputShape;
        foreach (int entry in configuration)
        {
            if (entry == M) { pool = true; stage++; continue; }
            var unit = new VggLayer(inChannels, entry, pool);
            var cost = unit.Cost(shape);
            units.Add(unit);
            shapes.Add((inChannels, entry, pool));
            infos.Add(new UnitInfo(infos.Count, $"features[{infos.Count}]", stage, shape, cost.Output, cost.SavedInput + cost.SavedInternal));
            shape = cost.Output;
            inChannels = entry;
            pool = false;
        }
        unitView.AddRange(units);
        head = new VggHead(inChannels, classes);
        (Units, UnitInfos) = (unitView, infos);
        RegisterComponents();
        InitializeLikeTorchvision(this);
    }

    /// <summary>VGG-13 with batch norm (configuration B: ten convolutions, 133.1 M parameters for 1000 classes).</summary>
    public static Vgg Vgg13Bn(int classes = 1000, int imageSize = 224) => new(13, classes, imageSize);

    /// <inheritdoc />
    public override nn.Module<Tensor, Tensor> CreateUnitLike(int index)
    {
        if (index < 0 || index >= units.Count) throw new ArgumentOutOfRangeException(nameof(index));
        var (inChannels, outChannels, pooled) = shapes[index];
        var unit = new VggLayer(inChannels, outChannels, pooled);
        InitializeLikeTorchvision(unit);
        return ApplyWorkaroundTo(unit); // the network's convolution policy
    }

    // torchvision's VGG initialisation: He-normal (fan-out) convolutions with zero bias, BN 1/0, linear N(0, 0.01) with zero bias.
    private static void InitializeLikeTorchvision(nn.Module module)
    {
        Initialization.ApplyReference(module);
        using var noGrad = no_grad();
        foreach (var (_, m) in module.named_modules())
        {
            if (m is Conv2dLayer { Bias: { } convBias }) nn.init.zeros_(convBias);
            if (m is LinearLayer linear)
            {
                nn.init.normal_(linear.Weight, 0, 0.01);
                if (linear.Bias is { } bias) nn.init.zeros_(bias);
            }
        }
    }
}
