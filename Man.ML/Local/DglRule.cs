// DGL (Belilovsky et al., 2020) as adapted to CIFAR ResNets in the MAN line of work (AugLocal's "MLP-SR" head,
// docs/REFERENCE.md §2.3 (b)): pool to ceil(S/4), three 1x1 conv-BN-ReLU layers, pool to at most 2x2, two
// bias-free linear-BN-ReLU layers, a linear classifier; the local loss is cross-entropy with weight 1.
using Man.ML.Models;
using TorchSharp.Modules;

namespace Man.ML.Local;

/// <summary>Which DGL auxiliary head.</summary>
public enum DglHeadKind
{
    /// <summary>AugLocal's MLP-SR adaptation (docs/REFERENCE.md §2.3 (b)); the default.</summary>
    [ChoiceName("mlp-sr")]
    MlpSr,

    /// <summary>MAN++'s head: pool 8x8, three 1x1 convs to 128 channels, three 512-wide linear layers (§2.3 (a)).</summary>
    [ChoiceName("manpp")]
    ManPlusPlus,
}

/// <summary>The DGL rule: an auxiliary classifier per segment, cross-entropy loss with weight 1.</summary>
internal sealed class DglRule(DglHeadKind head = DglHeadKind.MlpSr) : ILocalLearningRule
{
    /// <summary>The rule's name.</summary>
    public const string RuleName = "dgl";

    /// <summary>The auxiliary head used.</summary>
    public DglHeadKind Head { get; } = head;

    /// <inheritdoc />
    public string Name => RuleName;

    /// <inheritdoc />
    public bool IsLocal => true;

    /// <inheritdoc />
    public AuxiliaryHead CreateHead(HeadContext context) => Head == DglHeadKind.ManPlusPlus
        ? new DglManPlusPlusHead(context.Features, context.Classes)
        : new DglHead(context.Features, context.Classes, context.Network.Family == NetworkFamily.ImageNet);

    /// <inheritdoc />
    public HeadPlan DescribeHead(HeadContext context) =>
        new(Head == DglHeadKind.MlpSr && context.Network.Family == NetworkFamily.ImageNet ? "mlp-sr-imagenet" : Choices.Name(Head), "ce");
}

/// <summary>
/// DGL's MLP-SR auxiliary classifier for a C×S×S feature map. On CIFAR networks AugLocal's adaptation (two bias-free
/// hidden linear layers); on ImageNet networks DGL's own ImageNet head (three hidden linear layers with bias,
/// docs/REFERENCE.md §6.2).
/// </summary>
internal sealed class DglHead : AuxiliaryHead, IHasCost
{
    private readonly int firstPool;
    private readonly int secondPool;
    private readonly Sequential convs;
    private readonly Sequential mlp;

    private readonly int hiddenLinears;

    /// <summary>Creates the head for features of shape <paramref name="input"/>.</summary>
    /// <param name="input">Shape of the features.</param>
    /// <param name="classes">Number of classes.</param>
    /// <param name="imageNet">DGL's ImageNet variant: three hidden linear layers with bias instead of two without.</param>
    public DglHead(FeatureShape input, int classes, bool imageNet = false) : base(nameof(DglHead))
    {
        int c = input.Channels;
        int side = Math.Max(input.Height, input.Width);
        firstPool = (side + 3) / 4;                 // ceil(S/4)
        secondPool = Math.Min(firstPool, 2);
        convs = nn.Sequential(
            new Conv2dLayer(c, c, 1, bias: false), BatchNormLayer.TwoDimensional(c), nn.ReLU(inplace: true),
            new Conv2dLayer(c, c, 1, bias: false), BatchNormLayer.TwoDimensional(c), nn.ReLU(inplace: true),
            new Conv2dLayer(c, c, 1, bias: false), BatchNormLayer.TwoDimensional(c), nn.ReLU(inplace: true));
        int features = c * secondPool * secondPool;
        hiddenLinears = imageNet ? 3 : 2;
        var layers = new List<nn.Module<Tensor, Tensor>>();
        for (int i = 0; i < hiddenLinears; i++)
        {
            layers.Add(new LinearLayer(features, features, hasBias: imageNet));
            layers.Add(BatchNormLayer.OneDimensional(features));
            layers.Add(nn.ReLU(inplace: true));
        }
        layers.Add(new LinearLayer(features, classes));
        mlp = nn.Sequential(layers.ToArray());
        RegisterComponents();
        Initialization.ApplyReference(this);
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.adaptive_avg_pool2d(x, firstPool);           // (B, C, S/4, S/4)
        h = convs.call(h);
        h = nn.functional.adaptive_avg_pool2d(h, secondPool).flatten(1);   // (B, C·m²)
        return mlp.call(h).MoveToOuterDisposeScope();                      // (B, classes)
    }

    /// <inheritdoc />
    public override Tensor Loss(Tensor features, LocalTargets targets)
    {
        using var scope = NewDisposeScope();
        return nn.functional.cross_entropy(MixedPrecision.Float32(call(features)), targets.Labels).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Keeps the pooled map and, per 1x1 conv layer, its output and ReLU output; per hidden linear layer, its input's
    /// BN input and ReLU output; the logits' softmax. Pooling keeps nothing of its input.
    /// </summary>
    public ModuleCost Cost(FeatureShape input)
    {
        int c = input.Channels;
        long pooled = (long)c * firstPool * firstPool, features = (long)c * secondPool * secondPool;
        long classes = ((LinearLayer)mlp[^1]).OutFeatures;
        long saved = pooled * 7 + features * (2 * hiddenLinears + 1) + classes;
        long flops = 3 * LayerCost.LinearFlops(c, c) * firstPool * firstPool + hiddenLinears * LayerCost.LinearFlops(features, features)
                     + LayerCost.LinearFlops(features, classes);
        return new ModuleCost(new FeatureShape((int)classes, 1, 1), 0, saved, false, flops);
    }
}

/// <summary>MAN++'s DGL head (docs/REFERENCE.md §2.3 (a)).</summary>
internal sealed class DglManPlusPlusHead : AuxiliaryHead, IHasCost
{
    private const int Width = 128, Hidden = 512;
    private readonly Sequential convs;
    private readonly Sequential mlp;

    /// <summary>Creates the head for features of shape <paramref name="input"/>.</summary>
    public DglManPlusPlusHead(FeatureShape input, int classes) : base(nameof(DglManPlusPlusHead))
    {
        convs = nn.Sequential(
            nn.AdaptiveAvgPool2d(8),
            new Conv2dLayer(input.Channels, Width, 1, bias: false), BatchNormLayer.TwoDimensional(Width), nn.ReLU(inplace: true),
            new Conv2dLayer(Width, Width, 1, bias: false), BatchNormLayer.TwoDimensional(Width), nn.ReLU(inplace: true),
            new Conv2dLayer(Width, Width, 1, bias: false), BatchNormLayer.TwoDimensional(Width), nn.ReLU(inplace: true),
            nn.AdaptiveAvgPool2d(1), nn.Flatten());
        mlp = nn.Sequential(
            new LinearLayer(Width, Hidden), BatchNormLayer.OneDimensional(Hidden), nn.ReLU(inplace: true),
            new LinearLayer(Hidden, Hidden), BatchNormLayer.OneDimensional(Hidden), nn.ReLU(inplace: true),
            new LinearLayer(Hidden, Hidden), BatchNormLayer.OneDimensional(Hidden), nn.ReLU(inplace: true),
            new LinearLayer(Hidden, classes));
        RegisterComponents();
        Initialization.ApplyReference(this);
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return mlp.call(convs.call(x)).MoveToOuterDisposeScope(); // (B, classes)
    }

    /// <inheritdoc />
    public override Tensor Loss(Tensor features, LocalTargets targets)
    {
        using var scope = NewDisposeScope();
        return nn.functional.cross_entropy(MixedPrecision.Float32(call(features)), targets.Labels).MoveToOuterDisposeScope();
    }

    /// <summary>Like <see cref="DglHead.Cost"/> with 128 channels at 8x8 and 512-wide linear layers.</summary>
    public ModuleCost Cost(FeatureShape input)
    {
        long classes = ((LinearLayer)mlp[^1]).OutFeatures;
        long pooled = 64L * input.Channels;
        long saved = pooled + 6 * 64L * Width + Width + 3 * 2 * Hidden + classes;
        long flops = 64L * (LayerCost.LinearFlops(input.Channels, Width) + 2 * LayerCost.LinearFlops(Width, Width))
                     + LayerCost.LinearFlops(Width, Hidden) + 2 * LayerCost.LinearFlops(Hidden, Hidden) + LayerCost.LinearFlops(Hidden, classes);
        return new ModuleCost(new FeatureShape((int)classes, 1, 1), 0, saved, false, flops);
    }
}
