// InfoPro (Wang et al., ICLR 2021) on CIFAR ResNets, as in the InfoPro and MAN reference code (docs/REFERENCE.md
// §2.1, §3.6): a decoder that reconstructs the (de-normalised, augmented) input image from a segment's features and an
// auxiliary classifier in one of six configurations; the local loss is λ1·BCE(reconstruction) + λ2·(CE or supervised
// contrastive). λ is interpolated over the local-module index (InfoPro) or over the stage of the unit MAN copies (MAN's
// code); a schedule that yields a negative weight, or zero for both terms (a segment that would not learn), is an error.
using Man.ML.Data;
using Man.ML.Models;
using TorchSharp.Modules;
using Man.ML.Backend;

namespace Man.ML.Local;

/// <summary>Configurations of InfoPro's auxiliary classifier: convolutions then fully connected layers.</summary>
public enum AuxClassifierConfig
{
    /// <summary>GAP, one linear layer.</summary>
    [ChoiceName("0c1f")]
    C0F1,
    /// <summary>GAP, two linear layers.</summary>
    [ChoiceName("0c2f")]
    C0F2,
    /// <summary>One conv, GAP, one linear layer.</summary>
    [ChoiceName("1c1f")]
    C1F1,
    /// <summary>One conv, GAP, two linear layers (InfoPro's default).</summary>
    [ChoiceName("1c2f")]
    C1F2,
    /// <summary>One conv, GAP, three linear layers.</summary>
    [ChoiceName("1c3f")]
    C1F3,
    /// <summary>Two convs, GAP, two linear layers (MAN's default).</summary>
    [ChoiceName("2c2f")]
    C2F2,
}

/// <summary>What the auxiliary classifier's loss is.</summary>
public enum InfoProLossMode
{
    /// <summary>Cross-entropy on class logits.</summary>
    [ChoiceName("ce")]
    CrossEntropy,
    /// <summary>Supervised contrastive loss on 128-d embeddings, temperature 0.07.</summary>
    [ChoiceName("contrast")]
    Contrastive,
}

/// <summary>How λ varies across segments.</summary>
public enum LambdaSchedule
{
    /// <summary>InfoPro: linear in the local-module index m, ratio m/(K−2).</summary>
    [ChoiceName("module")]
    ModuleIndex,
    /// <summary>MAN's code: by the stage (1..3) of the unit MAN copies, ratio stage/(K−2).</summary>
    [ChoiceName("stage")]
    CopiedUnitStage,
}

/// <summary>The four loss weights: λ1 = ixx, λ2 = ixy at the first (…1) and last (…2) local module.</summary>
public readonly record struct InfoProLambdas(double Ixx1, double Ixy1, double Ixx2, double Ixy2)
{
    /// <summary>Parses "ixx1,ixy1,ixx2,ixy2".</summary>
    /// <exception cref="InvalidOptionException">Not four numbers.</exception>
    public static InfoProLambdas Parse(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        static bool IsNumber(string p) =>
            double.TryParse(p, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out _);
        if (parts.Length != 4 || !parts.All(IsNumber))
            throw new InvalidOptionException("InfoPro.Lambdas", $"λ must be four numbers 'ixx1,ixy1,ixx2,ixy2' (got '{text}').");
        var v = parts.Select(p => double.Parse(p, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        return new InfoProLambdas(v[0], v[1], v[2], v[3]);
    }

    /// <inheritdoc />
    public override string ToString() => FormattableString.Invariant($"{Ixx1},{Ixy1},{Ixx2},{Ixy2}");
}

/// <summary>InfoPro settings; a null member takes the default for the run (docs/METHOD.md §2: InfoPro alone 1c2f, contrastive,
/// the InfoPro table's λ by module index; with MAN 2c2f, cross-entropy, λ (5, 0.5 → 0, 0) by copied-unit stage).</summary>
public sealed record InfoProSettings
{
    /// <summary>Auxiliary classifier configuration.</summary>
    public AuxClassifierConfig? Classifier { get; init; }

    /// <summary>Loss of the auxiliary classifier.</summary>
    public InfoProLossMode? LossMode { get; init; }

    /// <summary>Loss weights.</summary>
    public InfoProLambdas? Lambdas { get; init; }

    /// <summary>λ schedule.</summary>
    public LambdaSchedule? Schedule { get; init; }

    /// <summary>Data set the InfoPro λ table is looked up for: cifar10, svhn or stl10. Default cifar10.</summary>
    public string Dataset { get; init; } = "cifar10";
}

/// <summary>The InfoPro rule.</summary>
internal sealed class InfoProRule(InfoProSettings settings) : ILocalLearningRule
{
    /// <summary>The rule's name.</summary>
    public const string RuleName = "infopro";

    /// <summary>Weights MAN's README uses with InfoPro: (5, 0.5 → 0, 0).</summary>
    public static readonly InfoProLambdas ManLambdas = new(5, 0.5, 0, 0);

    /// <summary>The settings as given (nulls resolved per run).</summary>
    public InfoProSettings Settings { get; } = settings;

    /// <inheritdoc />
    public string Name => RuleName;

    /// <inheritdoc />
    public bool IsLocal => true;

    /// <summary>
    /// λ of InfoPro's ImageNet code: (5, 1) for ResNet-152, (5, 0.75) for every other network, the same for every
    /// segment (the MAN ImageNet code hard-codes 5 / 0.75; InfoPro ran ResNet-152 with 1).
    /// </summary>
    public static InfoProLambdas ImageNetLambdas(string architecture)
    {
        double ixy = architecture.Equals("resnet152", StringComparison.OrdinalIgnoreCase) ? 1 : 0.75;
        return new InfoProLambdas(5, ixy, 5, ixy);
    }

    /// <summary>The classifier, loss mode, λ and schedule a segment gets, defaults resolved. ImageNet-family networks
    /// have one classifier (InfoPro's ImageNet head), reported as null.</summary>
    /// <exception cref="ArgumentException">A classifier configuration was asked for on an ImageNet network, or no λ is known.</exception>
    public (AuxClassifierConfig? Classifier, InfoProLossMode Mode, InfoProLambdas Lambdas, LambdaSchedule Schedule) Resolve(HeadContext context)
    {
        if (context.Network.Family == NetworkFamily.ImageNet)
        {
            if (Settings.Classifier is not null)
                throw new InvalidOptionException("InfoPro.Classifier",
                    $"{context.Network.Architecture} uses InfoPro's ImageNet auxiliary classifier; the CIFAR configurations (--aux-config) do not apply.");
            return (null, Settings.LossMode ?? InfoProLossMode.CrossEntropy, Settings.Lambdas ?? ImageNetLambdas(context.Network.Architecture),
                Settings.Schedule ?? LambdaSchedule.ModuleIndex);
        }
        var classifier = Settings.Classifier ?? (context.WithMan ? AuxClassifierConfig.C2F2 : AuxClassifierConfig.C1F2);
        var mode = Settings.LossMode ?? (context.WithMan ? InfoProLossMode.CrossEntropy : InfoProLossMode.Contrastive);
        var schedule = Settings.Schedule ?? (context.WithMan ? LambdaSchedule.CopiedUnitStage : LambdaSchedule.ModuleIndex);
        InfoProLambdas lambdas;
        if (Settings.Lambdas is { } given) lambdas = given;
        else if (context.WithMan) lambdas = ManLambdas;
        else if (context.Network is CifarResNet resnet && InfoProLambdaTable.TryGet(Settings.Dataset, resnet.Depth, context.Split.K, out var table))
            lambdas = table;
        else
            throw new InvalidOptionException("InfoPro.Lambdas",
                $"InfoPro has no reference λ for {Settings.Dataset}, {context.Network.Architecture}, K={context.Split.K}; " +
                "give them as 'ixx1,ixy1,ixx2,ixy2' (--lambda; in ML.NET RuleSettings.InfoPro.Lambdas).");
        return (classifier, mode, lambdas, schedule);
    }

    /// <summary>λ1 (reconstruction) and λ2 (classification) of a segment.</summary>
    /// <exception cref="ArgumentException">The schedule gives a negative weight.</exception>
    public static (double Reconstruction, double Classification) Weights(HeadContext context, InfoProLambdas lambdas, LambdaSchedule schedule)
    {
        int k = context.Split.K;
        double ratio;
        if (k <= 2) ratio = 0;
        else if (schedule == LambdaSchedule.ModuleIndex) ratio = (double)context.Segment / (k - 2);
        else ratio = (double)context.Network.UnitInfos[context.CopiedUnit ?? context.Split.NextUnit(context.Segment)].Stage / (k - 2);
        double l1 = lambdas.Ixx1 * (1 - ratio) + lambdas.Ixx2 * ratio;
        double l2 = lambdas.Ixy1 * (1 - ratio) + lambdas.Ixy2 * ratio;
        if (l1 < 0 || l2 < 0)
            throw new InvalidOptionException("InfoPro.Lambdas", FormattableString.Invariant(
                $"The λ schedule ({Choices.Name(schedule)}, λ = {lambdas}) gives segment {context.Segment} of K={k} ") + FormattableString.Invariant(
                $"negative weights ({l1:0.###}, {l2:0.###}); choose other λ or another schedule."));
        if (l1 == 0 && l2 == 0)
            throw new InvalidOptionException("InfoPro.Lambdas", FormattableString.Invariant(
                $"The λ schedule ({Choices.Name(schedule)}, λ = {lambdas}) gives segment {context.Segment} of K={k} ") +
                "zero weights: it would not learn; choose other λ or another schedule.");
        return (l1, l2);
    }

    /// <inheritdoc />
    public HeadPlan DescribeHead(HeadContext context)
    {
        var (classifier, mode, lambdas, schedule) = Resolve(context);
        var (reconstruction, classification) = Weights(context, lambdas, schedule);
        return new HeadPlan(classifier is { } c ? Choices.Name(c) : "imagenet", Choices.Name(mode))
        {
            ReconstructionWeight = reconstruction,
            ClassificationWeight = classification,
        };
    }

    /// <inheritdoc />
    public AuxiliaryHead CreateHead(HeadContext context)
    {
        var (classifier, mode, lambdas, schedule) = Resolve(context);
        var (reconstruction, classification) = Weights(context, lambdas, schedule);
        if (classifier is null)
            return new InfoProImageNetHead(context.Features, context.Network.InputShape, context.Classes, mode, reconstruction,
                classification, context.Normalization);
        return new InfoProHead(context.Features, context.Network.InputShape, context.Classes, classifier.Value, mode, reconstruction,
            classification, context.Normalization);
    }
}

/// <summary>The reference λ of InfoPro's command file (docs/REFERENCE.md §2.1), by data set, depth and K.</summary>
internal static class InfoProLambdaTable
{
    // One row per network InfoPro's authors ran: K and λ (ixx1, ixy1, ixx2, ixy2) of each of its runs. CIFAR-10 ResNet-110
    // at K = 55 is AugLocal's re-run of InfoPro.
    private static readonly Dictionary<(string Dataset, int Depth, int K), InfoProLambdas> Table = Rows(
        ("cifar10", 32, [(2, new(5, 1, 0, 0)), (4, new(6, 0, 1, 2)), (8, new(5, 0, 0, 2)), (16, new(5, 0.05, 0.2, 0.5))]),
        ("cifar10", 110, [(2, new(5, 0.5, 0, 0)), (4, new(1, 0, 0, 1)), (8, new(5, 0, 0, 1)), (16, new(5, 0, 0.5, 1)), (55, new(5, 0, 0.5, 1))]),
        ("stl10", 110, [(2, new(10, 1, 0, 0)), (4, new(20, 0.2, 5, 2)), (8, new(20, 0.2, 5, 1)), (16, new(20, 0.5, 10, 0.1))]),
        ("svhn", 110, [(2, new(1, 0.1, 0, 0)), (4, new(5, 0, 0.5, 1)), (8, new(5, 0, 0.5, 2)), (16, new(5, 0.2, 0.5, 1))]));

    private static Dictionary<(string, int, int), InfoProLambdas> Rows(params (string Dataset, int Depth, (int K, InfoProLambdas Lambdas)[] Runs)[] rows) =>
        rows.SelectMany(r => r.Runs.Select(run => KeyValuePair.Create((r.Dataset, r.Depth, run.K), run.Lambdas))).ToDictionary();

    /// <summary>
    /// λ for a Table 1 preset: the table's entry when InfoPro's authors ran that cell, otherwise the entry of the same data
    /// set at the nearest K of ResNet-110 (the depth they ran on SVHN and STL-10), or of CIFAR-10 at the same depth.
    /// </summary>
    public static (InfoProLambdas Lambdas, string Source) ForPreset(string dataset, int depth, int k)
    {
        if (TryGet(dataset, depth, k, out var exact)) return (exact, "InfoPro's setting");
        foreach (var (d, kk) in new[] { (depth, 16), (110, k), (110, k <= 8 ? 8 : 16), (110, 16) })
            if (TryGet(dataset, d, kk, out var borrowed)) return (borrowed, $"borrowed from InfoPro's {dataset} ResNet-{d} K={kk}");
        TryGet("cifar10", depth, 16, out var fallback);
        return (fallback, $"borrowed from InfoPro's cifar10 ResNet-{depth} K=16");
    }

    /// <summary>Looks up the λ InfoPro's authors ran.</summary>
    public static bool TryGet(string dataset, int depth, int k, out InfoProLambdas lambdas) =>
        Table.TryGetValue((dataset.ToLowerInvariant(), depth, k), out lambdas);
}

/// <summary>InfoPro's auxiliary network: decoder and classifier on one segment's features.</summary>
internal sealed class InfoProHead : AuxiliaryHead, IHasCost
{
    private const int DecoderWidth = 12, EmbeddingWidth = 128;
    private readonly Sequential decoder;
    private readonly Sequential classifier;
    private readonly AuxClassifierConfig config;
    private readonly int outputs;
    private readonly Tensor mean;
    private readonly Tensor std;
    private readonly long[] imageSize;

    /// <summary>Weight of the reconstruction loss (λ1).</summary>
    public double ReconstructionWeight { get; }

    /// <summary>Weight of the classification loss (λ2).</summary>
    public double ClassificationWeight { get; }

    /// <summary>The classifier's loss.</summary>
    public InfoProLossMode Mode { get; }

    /// <summary>Creates the head.</summary>
    public InfoProHead(FeatureShape input, FeatureShape image, int classes, AuxClassifierConfig config, InfoProLossMode mode,
        double reconstructionWeight, double classificationWeight, Normalization normalization) : base(nameof(InfoProHead))
    {
        Mode = mode;
        ReconstructionWeight = reconstructionWeight;
        ClassificationWeight = classificationWeight;
        imageSize = new long[] { image.Height, image.Width };
        decoder = nn.Sequential(
            new Conv2dLayer(input.Channels, DecoderWidth, 3, padding: 1), BatchNormLayer.TwoDimensional(DecoderWidth), nn.ReLU(inplace: true),
            new Conv2dLayer(DecoderWidth, image.Channels, 3, padding: 1), new Float32Sigmoid());
        this.config = config;
        outputs = mode == InfoProLossMode.CrossEntropy ? classes : EmbeddingWidth;
        classifier = AuxClassifier(input.Channels, config, outputs);
        mean = tensor(normalization.Mean).view(1, -1, 1, 1);
        std = tensor(normalization.Std).view(1, -1, 1, 1);
        RegisterComponents();
        Initialization.ApplyReference(this);
    }

    /// <summary>The classifier for <paramref name="channels"/> inputs: convolutions double the width (stride 2) until 64
    /// channels, then keep it (stride 1).</summary>
    public static Sequential AuxClassifier(int channels, AuxClassifierConfig config, int outputs)
    {
        int convs = config switch { AuxClassifierConfig.C0F1 or AuxClassifierConfig.C0F2 => 0, AuxClassifierConfig.C2F2 => 2, _ => 1 };
        int linears = config switch { AuxClassifierConfig.C0F1 or AuxClassifierConfig.C1F1 => 1, AuxClassifierConfig.C1F3 => 3, _ => 2 };
        var layers = new List<nn.Module<Tensor, Tensor>>();
        int width = channels;
        for (int c = 0; c < convs; c++)
        {
            bool first = c == 0;
            int outWidth = first && channels < 64 ? 2 * channels : width;
            int stride = first && channels < 64 ? 2 : 1;
            layers.Add(new Conv2dLayer(width, outWidth, 3, stride: stride, padding: 1, bias: false));
            layers.Add(BatchNormLayer.TwoDimensional(outWidth));
            layers.Add(nn.ReLU(inplace: true));
            width = outWidth;
        }
        layers.Add(nn.AdaptiveAvgPool2d(1));
        layers.Add(nn.Flatten());
        for (int f = 0; f < linears; f++)
        {
            bool last = f == linears - 1;
            int outWidth = last ? outputs : EmbeddingWidth;
            layers.Add(new LinearLayer(width, outWidth));
            if (!last) layers.Add(nn.ReLU(inplace: true));
            width = outWidth;
        }
        return nn.Sequential(layers.ToArray());
    }

    /// <summary>The classifier's output: class logits or the 128-d embedding.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return classifier.call(x).MoveToOuterDisposeScope();
    }

    /// <summary>The decoder's reconstruction of the input image, (B, 3, H, W) in [0, 1].</summary>
    public Tensor Reconstruct(Tensor x)
    {
        using var scope = NewDisposeScope();
        // The first convolution of the bilinearly resized map, without building the resized map where that is cheaper
        // (UpsampledConvolution.cs); then the rest of the decoder.
        var layers = decoder.children().Cast<nn.Module<Tensor, Tensor>>().ToList();
        // Channels-first from here: libtorch's channels-last batch norm is about ten times slower at 12 channels
        // (docs/BACKEND.md); a no-op where the route already returns channels-first maps.
        var h = UpsampledConvolution.Forward((Conv2dLayer)layers[0], x, (int)imageSize[0], (int)imageSize[1]).contiguous(); // (B, 12, H, W)
        foreach (var layer in layers.Skip(1)) h = layer.call(h);
        return h.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Decoder (when λ1 ≠ 0): what its first convolution's route keeps (the resized map, the separable route's two
    /// products, or the input itself; see UpsampledConvolution), conv output, ReLU output, the sigmoid output and the
    /// reconstruction target. Classifier (when λ2 ≠ 0): its input, per conv its output and ReLU output, per linear layer
    /// its input, the output's softmax or similarity matrix. Its input counts once. FLOPs are the reference
    /// computation's (the decoder's convolution at full resolution), whichever route computes it.
    /// </summary>
    public ModuleCost Cost(FeatureShape input)
    {
        long image = imageSize[0] * imageSize[1];
        long saved = 0, flops = 0;
        bool keepsInput = false;
        if (ReconstructionWeight != 0)
        {
            var up = new FeatureShape(input.Channels, (int)imageSize[0], (int)imageSize[1]);
            var first = (Conv2dLayer)decoder.children().First();
            saved += UpsampledConvolution.SavedElements(first, input, up.Height, up.Width) + 2 * DecoderWidth * image + 2 * 3 * image;
            keepsInput = UpsampledConvolution.KeepsInput(first, input, up.Height, up.Width);
            flops += LayerCost.ConvFlops(up, new FeatureShape(DecoderWidth, up.Height, up.Width), 3)
                     + LayerCost.ConvFlops(new FeatureShape(DecoderWidth, up.Height, up.Width), new FeatureShape(3, up.Height, up.Width), 3);
        }
        if (ClassificationWeight != 0)
        {
            int convs = config switch { AuxClassifierConfig.C0F1 or AuxClassifierConfig.C0F2 => 0, AuxClassifierConfig.C2F2 => 2, _ => 1 };
            int linears = config switch { AuxClassifierConfig.C0F1 or AuxClassifierConfig.C1F1 => 1, AuxClassifierConfig.C1F3 => 3, _ => 2 };
            var shape = input;
            keepsInput |= convs > 0;
            for (int c = 0; c < convs; c++)
            {
                bool first = c == 0;
                var output = LayerCost.ConvOutput(shape, first && input.Channels < 64 ? 2 * input.Channels : shape.Channels, 3,
                    first && input.Channels < 64 ? 2 : 1, 1);
                flops += LayerCost.ConvFlops(shape, output, 3);
                saved += 2 * output.Elements;
                shape = output;
            }
            long width = shape.Channels;
            for (int f = 0; f < linears; f++)
            {
                long outWidth = f == linears - 1 ? outputs : EmbeddingWidth;
                flops += LayerCost.LinearFlops(width, outWidth);
                saved += width;
                width = outWidth;
            }
            saved += outputs;
        }
        return new ModuleCost(new FeatureShape(outputs, 1, 1), keepsInput ? input.Elements : 0, saved, false, flops);
    }

    /// <inheritdoc />
    public override Tensor Loss(Tensor features, LocalTargets targets) =>
        InfoProLoss.Compute(features, targets, ReconstructionWeight, ClassificationWeight, Mode, mean, std, Reconstruct, call);
}

/// <summary>InfoPro's local loss, shared by its CIFAR and ImageNet heads: λ1·BCE(reconstruction, de-normalised input) + λ2·(CE | contrast).</summary>
internal static class InfoProLoss
{
    public static Tensor Compute(Tensor features, LocalTargets targets, double reconstructionWeight, double classificationWeight,
        InfoProLossMode mode, Tensor mean, Tensor std, Func<Tensor, Tensor> reconstruct, Func<Tensor, Tensor> classify)
    {
        using var scope = NewDisposeScope();
        // Explicit Scalars, alive until every call has returned (KeepAliveSgd.cs says why).
        using var lambda1 = reconstructionWeight.ToScalar();
        using var lambda2 = classificationWeight.ToScalar();
        using var zero = 0.0.ToScalar();
        using var one = 1.0.ToScalar();
        var loss = zeros(1, dtype: MixedPrecision.Float32(features).dtype, device: features.device).squeeze(); // never bf16 (MixedPrecision.cs)
        if (reconstructionWeight != 0)
        {
            var target = targets.Images.mul(std.to(features.device)).PlusInPlace(mean.to(features.device)).clamp_(zero, one); // de-normalised input
            loss = loss.Plus(nn.functional.binary_cross_entropy(MixedPrecision.Float32(reconstruct(features)), target).mul_(lambda1));
        }
        if (classificationWeight != 0)
        {
            var output = MixedPrecision.Float32(classify(features));
            var term = mode == InfoProLossMode.CrossEntropy
                ? nn.functional.cross_entropy(output, targets.Labels)
                : SupervisedContrastiveLoss.Compute(output, targets.Labels);
            loss = loss.Plus(term.mul(lambda2));
        }
        return loss.MoveToOuterDisposeScope();
    }
}

/// <summary>Supervised contrastive loss (Khosla et al., 2020) as InfoPro uses it: one view, all anchors.</summary>
internal static class SupervisedContrastiveLoss
{
    /// <summary>Temperature (and base temperature) of InfoPro: 0.07.</summary>
    public const double Temperature = 0.07;

    /// <summary>
    /// Loss of embeddings <paramref name="features"/> (B, D) with <paramref name="labels"/> (B): L2-normalise, similarities
    /// over the temperature, for each anchor the mean log-probability of its positives (same label, itself excluded)
    /// against all other samples, negated and averaged over anchors; an anchor without positives contributes 0.
    /// </summary>
    public static Tensor Compute(Tensor features, Tensor labels, double temperature = Temperature, double baseTemperature = Temperature)
    {
        using var scope = NewDisposeScope();
        long b = features.shape[0];
        var f = nn.functional.normalize(MixedPrecision.Float32(features), dim: 1); // (B, D), in float32 whatever the precision
        using var t = temperature.ToScalar();                                    // explicit: alive through the calls (KeepAliveSgd.cs)
        using var scale = (-(temperature / baseTemperature)).ToScalar();
        using var zero = 0L.ToScalar();
        var logits = f.matmul(f.t()).div_(t);                                    // (B, B)
        logits = logits - logits.max(1, keepdim: true).values.detach();
        var notSelf = ones(b, b, device: features.device) - eye(b, device: features.device);
        var positives = labels.unsqueeze(1).eq(labels.unsqueeze(0)).to_type(ScalarType.Float32) * notSelf;
        var logProb = logits - (logits.exp() * notSelf).sum(1, keepdim: true).log();
        var count = positives.sum(1);
        count = where(count.eq(zero), ones_like(count), count);
        var meanPositive = (positives * logProb).sum(1) / count;
        return meanPositive.mean().mul_(scale).MoveToOuterDisposeScope();
    }
}
