// Gradients of every module kind Man.ML trains, computed in float32 on the CPU (libtorch's fast kernels: oneDNN
// convolutions, vectorised BN and GEMM) and compared with the same module's gradients in float64 (libtorch's reference
// kernels: oneDNN has no float64 path), at 1 and at 2 threads. A backend that computes a wrong gradient for one of
// these shapes fails here, not in a training run hours later.
using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Models;
using TorchSharp;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

[TestClass]
public sealed class ModuleGradientTests
{
    /// <summary>A module and the scalar loss whose gradients are compared.</summary>
    /// <param name="Build">Builds the module (called twice under the same seed: the float32 and the float64 copy).</param>
    /// <param name="Input">Shape of the input batch.</param>
    /// <param name="Loss">The loss of the module on an input; the module's own loss for heads.</param>
    internal sealed record Case(Func<nn.Module> Build, long[] Input, Func<nn.Module, Tensor, Tensor> Loss);

    private static readonly long[] Labels = { 0, 1, 2, 1 }; // repeated labels: the contrastive loss has positives

    // The labels of a batch of any size: Labels repeated.
    private static Tensor LabelsFor(Tensor x) =>
        tensor(Enumerable.Range(0, (int)x.shape[0]).Select(i => Labels[i % Labels.Length]).ToArray(), device: x.device);

    // Output · fixed weights (a deterministic pattern, not drawn from the generator), so every output element matters.
    private static Tensor WeightedSum(Tensor output)
    {
        using var scope = NewDisposeScope();
        output = MixedPrecision.Float32(output); // a bf16 map's loss in float32, as training computes losses
        var pattern = HeldScalars.Arange(output.numel(), float64, output.device).TimesInPlace(0.37).add_(HeldScalars.One, HeldScalars.One).sin_()
            .view(output.shape).to(output.dtype);
        return (output * pattern).sum().MoveToOuterDisposeScope();
    }

    private static Func<nn.Module, Tensor, Tensor> Unit => (m, x) => WeightedSum(((nn.Module<Tensor, Tensor>)m).call(x));

    private static Func<nn.Module, Tensor, Tensor> Classifier =>
        (m, x) => nn.functional.cross_entropy(MixedPrecision.Float32(((nn.Module<Tensor, Tensor>)m).call(x)), LabelsFor(x));

    // An auxiliary head's own local loss; InfoPro reconstructs an image whose float copy is part of the targets.
    private static Func<nn.Module, Tensor, Tensor> HeadLoss(FeatureShape image) => (m, x) =>
    {
        using var scope = NewDisposeScope();
        var images = HeldScalars.Arange(x.shape[0] * image.Elements, float64).TimesInPlace(0.11).sin_()
            .view(x.shape[0], image.Channels, image.Height, image.Width).to(x.dtype);
        return ((AuxiliaryHead)m).Loss(x, new LocalTargets(LabelsFor(x), images)).MoveToOuterDisposeScope();
    };

    private static readonly FeatureShape SmallImage = new(3, 16, 16);

    /// <summary>Every trainable module kind, by name.</summary>
    internal static readonly IReadOnlyDictionary<string, Case> Cases = new Dictionary<string, Case>
    {
        // The convolution itself, on each of its routes (ConvolutionRouting): plain, padded output channels, subsampled input.
        ["Conv2dLayer 16→16 3x3"] = new(() => new Conv2dLayer(16, 16, 3, padding: 1), new long[] { 4, 16, 8, 8 }, Unit),
        ["Conv2dLayer 16→3 3x3 with bias"] = new(() => new Conv2dLayer(16, 3, 3, padding: 1), new long[] { 4, 16, 8, 8 }, Unit),
        ["Conv2dLayer 12→12 3x3 stride 2"] = new(() => new Conv2dLayer(12, 12, 3, stride: 2, padding: 1, bias: false), new long[] { 4, 12, 9, 9 }, Unit),
        ["Conv2dLayer 512→1024 1x1 stride 2"] = new(() => new Conv2dLayer(512, 1024, 1, stride: 2, bias: false), new long[] { 2, 512, 5, 5 }, Unit),
        // Backbone units.
        ["CifarStem 3→16"] = new(() => ConvStem.Cifar(3, 16), new long[] { 4, 3, 16, 16 }, Unit),
        ["BasicBlock 16→16"] = new(() => new BasicBlock(16, 16, 1), new long[] { 4, 16, 8, 8 }, Unit),
        ["BasicBlock 16→32 stride 2 (projection)"] = new(() => new BasicBlock(16, 32, 2), new long[] { 4, 16, 8, 8 }, Unit),
        ["ImageNetStem 3→64"] = new(() => ConvStem.ImageNet(3, 64), new long[] { 4, 3, 32, 32 }, Unit),
        ["BasicBlock 64→128 stride 2 (ImageNet)"] = new(() => new BasicBlock(64, 128, 2), new long[] { 4, 64, 8, 8 }, Unit),
        ["Bottleneck 256→256"] = new(() => new Bottleneck(256, 64, 1), new long[] { 4, 256, 4, 4 }, Unit),
        ["Bottleneck 256→512 stride 2"] = new(() => new Bottleneck(256, 128, 2), new long[] { 4, 256, 8, 8 }, Unit),
        ["Bottleneck 512→1024 stride 2"] = new(() => new Bottleneck(512, 256, 2), new long[] { 4, 512, 4, 4 }, Unit),
        ["Bottleneck 1024→2048 stride 2"] = new(() => new Bottleneck(1024, 512, 2), new long[] { 2, 1024, 4, 4 }, Unit),
        ["ResNeXt Bottleneck 256→512 stride 2, 32 groups"] = new(
            () => new Bottleneck(256, 128, 2, groups: 32, widthPerGroup: 4), new long[] { 4, 256, 8, 8 }, Unit),
        ["ResNeXt Bottleneck 512→512, 32 groups x8d"] = new(() => new Bottleneck(512, 128, 1, groups: 32, widthPerGroup: 8), new long[] { 4, 512, 4, 4 }, Unit),
        ["VggLayer 3→64"] = new(() => new VggLayer(3, 64, pooled: false), new long[] { 4, 3, 8, 8 }, Unit),
        ["VggLayer 64→128 pooled"] = new(() => new VggLayer(64, 128, pooled: true), new long[] { 4, 64, 8, 8 }, Unit),
        // Network heads.
        ["PooledLinearHead 64→10"] = new(() => new PooledLinearHead(64, 10), new long[] { 4, 64, 8, 8 }, Classifier),
        ["VggHead 16→10"] = new(() => new VggHead(16, 10), new long[] { 4, 16, 14, 14 }, Classifier),
        // MAN's copies of the next unit (LB + EMA; EMA takes no parameter gradient but passes the input gradient).
        ["MomentumBranch of a CIFAR BasicBlock 16→32"] = new(() => Branch(new CifarResNet(8), 2, new MomentumOptions()), new long[] { 4, 16, 8, 8 }, Unit),
        ["MomentumBranch, MAN++ learnable mix"] = new(
            () => Branch(new CifarResNet(8), 2, new MomentumOptions { Mix = ManMix.Learnable }), new long[] { 4, 16, 8, 8 }, Unit),
        ["MomentumBranch of an ImageNet Bottleneck 512→1024"] = new(
            () => Branch(ImageNetResNet.ResNet50(10, 32), 8, new MomentumOptions()), new long[] { 2, 512, 4, 4 }, Unit),
        // Auxiliary heads.
        ["DglHead (MLP-SR)"] = new(() => new DglHead(new FeatureShape(32, 8, 8), 10), new long[] { 4, 32, 8, 8 }, HeadLoss(SmallImage)),
        ["DglHead (ImageNet)"] = new(() => new DglHead(new FeatureShape(64, 8, 8), 10, imageNet: true), new long[] { 4, 64, 8, 8 }, HeadLoss(SmallImage)),
        ["DglManPlusPlusHead"] = new(() => new DglManPlusPlusHead(new FeatureShape(16, 16, 16), 10), new long[] { 4, 16, 16, 16 }, HeadLoss(SmallImage)),
        ["PredSimHead"] = new(() => new PredSimHead(new FeatureShape(32, 8, 8), 10), new long[] { 4, 32, 8, 8 }, HeadLoss(SmallImage)),
        ["InfoProImageNetHead 512"] = new(
            () => InfoProImageNet(new FeatureShape(512, 4, 4)), new long[] { 4, 512, 4, 4 }, HeadLoss(new FeatureShape(3, 32, 32))),
        ["InfoProImageNetHead 1024 (wide)"] = new(
            () => InfoProImageNet(new FeatureShape(1024, 2, 2)), new long[] { 4, 1024, 2, 2 }, HeadLoss(new FeatureShape(3, 32, 32))),
    }.Concat(
        // InfoPro's CIFAR head: decoder (C → 12 → 3) plus each classifier configuration, with either loss, at 16 and 64 channels.
        from config in Enum.GetValues<AuxClassifierConfig>()
        from mode in Enum.GetValues<InfoProLossMode>()
        from channels in new[] { 16, 64 }
        where channels == 16 || (config == AuxClassifierConfig.C2F2 && mode == InfoProLossMode.CrossEntropy)
        select KeyValuePair.Create($"InfoProHead {channels} {config} {mode}", new Case(
            () => new InfoProHead(new FeatureShape(channels, 8, 8), SmallImage, 10, config, mode, 1.0, 1.0, Normalization.Cifar),
            new long[] { 4, channels, 8, 8 }, HeadLoss(SmallImage)))
    ).ToDictionary(p => p.Key, p => p.Value);

    private static MomentumBranch Branch(UnitChainNetwork network, int nextUnit, MomentumOptions options)
    {
        using (network) return new MomentumBranch(network, nextUnit, options);
    }

    private static InfoProImageNetHead InfoProImageNet(FeatureShape features) =>
        new(features, new FeatureShape(3, 32, 32), 10, InfoProLossMode.CrossEntropy, 5, 0.75, ImageNetTransform.ImageNetNormalization);

    public static IEnumerable<object[]> CaseNames =>
        Cases.Keys.SelectMany(name => new[] { new object[] { name, 1 }, new object[] { name, 2 } });

    [TestMethod]
    [DynamicData(nameof(CaseNames))]
    public void Float32GradientsMatchFloat64(string name, int threads)
    {
        var failures = GradientComparison.Compare(Cases[name], threads);
        Assert.IsEmpty(failures, $"{name} at {threads} thread(s): {string.Join("; ", failures)}. {GradientComparison.Explanation}");
    }

    // The workaround forced on, so that its routes are checked on every machine, affected or not. The module's own
    // convolutions carry the policy, as a network's do (nothing process-wide is changed).
    [TestMethod]
    [DynamicData(nameof(CaseNamesAtOneThread))]
    public void Float32GradientsMatchFloat64WithTheWorkaroundForced(string name, int threads)
    {
        var forced = Cases[name] with { Build = () => WithWorkaround(Cases[name].Build(), ConvolutionWorkaround.Always) };
        var failures = GradientComparison.Compare(forced, threads);
        Assert.IsEmpty(failures, $"{name} with the workaround forced on: {string.Join("; ", failures)}. {GradientComparison.Explanation}");
    }

    private static nn.Module WithWorkaround(nn.Module module, ConvolutionWorkaround policy)
    {
        foreach (var conv in module.modules().Prepend(module).OfType<Conv2dLayer>()) conv.UseWorkaround(policy);
        return module;
    }

    public static IEnumerable<object[]> CaseNamesAtOneThread => Cases.Keys.Select(name => new object[] { name, 1 });

    // Training lays activations out channels-last on the CPU (ActivationLayouts): the same modules with a channels-last
    // float32 input (every layer after the first then sees channels-last tensors) against float64.
    [TestMethod]
    [DynamicData(nameof(CaseNamesAtTwoThreads))]
    public void Float32GradientsMatchFloat64WithChannelsLastInputs(string name, int threads)
    {
        var failures = GradientComparison.Compare(Cases[name], threads, channelsLast: true);
        Assert.IsEmpty(failures, $"{name} with a channels-last input at {threads} thread(s): {string.Join("; ", failures)}. {GradientComparison.Explanation}");
    }

    public static IEnumerable<object[]> CaseNamesAtTwoThreads => Cases.Keys.Select(name => new object[] { name, 2 });

    // bf16 mixed precision (MixedPrecision.cs): float32 parameters, products in bf16 inside a precision scope, against the
    // same module in float64. Native bf16 runs libtorch's bf16 kernels whatever the CPU (its fallback kernels where the
    // CPU has no bf16 instructions, oneDNN's where it has); emulated bf16 runs float32 kernels on bf16-rounded operands.
    // Both directions of the check are asserted: within bf16's tolerance, and farther from float64 than float32 would be
    // (so the test cannot pass by computing in float32).
    [TestMethod]
    [DynamicData(nameof(CaseNamesInBFloat16))]
    public void BFloat16GradientsMatchFloat64(string name, TrainingPrecision precision)
    {
        var (failures, largest) = GradientComparison.CompareInBFloat16(Cases[name], precision);
        Assert.IsEmpty(failures, $"{name} in {precision}: {string.Join("; ", failures)}. {GradientComparison.BFloat16Explanation}");
        Assert.IsGreaterThan(GradientComparison.FloorTolerance, largest,
            $"{name} in {precision}: every gradient is within float32's error of float64 ({largest:g3}), so nothing was computed in bf16.");
    }

    // The other routes in bf16, as training takes them: the workaround's rewrites forced on (padded output channels,
    // shifted taps, subsampled input) and channels-last inputs (the pointwise-product route of 1x1 convolutions).
    [TestMethod]
    [DynamicData(nameof(CaseNamesForBFloat16Routes))]
    public void BFloat16GradientsMatchFloat64WithTheWorkaroundForcedAndChannelsLastInputs(string name, int variant)
    {
        var c = variant == 1 ? Cases[name] with { Build = () => WithWorkaround(Cases[name].Build(), ConvolutionWorkaround.Always) } : Cases[name];
        var (failures, _) = GradientComparison.CompareInBFloat16(c, TrainingPrecision.BFloat16, channelsLast: variant == 2);
        Assert.IsEmpty(failures, $"{name} in bf16 {(variant == 1 ? "with the workaround forced on" : "with a channels-last input")}: " +
                                 $"{string.Join("; ", failures)}. {GradientComparison.BFloat16Explanation}");
    }

    /// <summary>Each case with variant 1 (the workaround forced on) and 2 (a channels-last input).</summary>
    public static IEnumerable<object[]> CaseNamesForBFloat16Routes =>
        Cases.Keys.SelectMany(name => new[] { new object[] { name, 1 }, new object[] { name, 2 } });

    public static IEnumerable<object[]> CaseNamesInBFloat16 =>
        Cases.Keys.SelectMany(name => new[] { TrainingPrecision.BFloat16, TrainingPrecision.BFloat16Emulated }.Select(p => new object[] { name, p }));

    [TestMethod]
    public void EveryModuleKindIsCovered()
    {
        // A new trainable module kind must get a case above: every concrete nn.Module subclass in the library's Models and
        // Local namespaces (networks, which are chains of the units above, excepted).
        var covered = Cases.Values.Select(c => { using var m = c.Build(); return m.GetType(); }).ToHashSet();
        var kinds = typeof(UnitChainNetwork).Assembly.GetTypes()
            .Where(t => t is { IsAbstract: false, IsPublic: true } && typeof(nn.Module).IsAssignableFrom(t) && !typeof(UnitChainNetwork).IsAssignableFrom(t)
                        && t.Namespace is "Man.ML.Models" or "Man.ML.Local" && t != typeof(MomentumAuxiliaryNetwork))
            .ToList();
        var missing = kinds.Where(t => !covered.Contains(t)).Select(t => t.Name).ToList();
        Assert.IsEmpty(missing, $"module kinds without a gradient test: {string.Join(", ", missing)}");
    }
}

/// <summary>Float32 gradients of a module against its float64 copy's.</summary>
internal static class GradientComparison
{
    /// <summary>Relative tolerance: against the largest float64 gradient of the same tensor, plus a floor of
    /// 1e-5 × the largest gradient of the whole check (tensors whose exact gradient is zero, such as a bias before BN).
    /// Correct float32 kernels stay below 1e-5 on these sizes; the failures seen on affected CPUs are O(1) or NaN.</summary>
    public const double RelativeTolerance = 1e-3, FloorTolerance = 1e-5;

    /// <summary>
    /// Tolerance of a bf16 gradient against float64, norm-wise, relative to the float64 gradient's norm, for modules made
    /// of products alone (convolutions, linear layers, pooling, ReLU). bf16 keeps 8 significant bits: every rounding
    /// (an operand, a product's result) is off by at most u = 2⁻⁸ ≈ 0.0039 relative; the gradients measured stay within
    /// 4u (libtorch's fallback kernels, which also round partial sums) and 2u (float32 kernels): 8u = 2⁻⁵.
    /// </summary>
    public const double BFloat16Tolerance = 1.0 / 32;

    /// <summary>
    /// The same for modules with batch norm in training mode or max pooling. Batch norm's own bf16 kernel is within 2u
    /// (PrecisionTests), but its output does not change with the scale of the weights before it, so their gradient is what
    /// is left after a projection cancels most of the incoming one, and carries the absolute error of the part cancelled;
    /// max pooling picks another maximum where bf16 rounding makes two equal. Measured up to 23u of the tensor's norm
    /// (and 9% of the module's gradient norm): 2⁻³ = 32u, plus <see cref="BFloat16ConditionedFloor"/>.
    /// </summary>
    public const double BFloat16ConditionedTolerance = 1.0 / 8;

    /// <summary>Floor of the bf16 tolerance, relative to the norm of all the module's gradients together (a gradient made
    /// small by cancellation keeps the absolute error of the terms it cancels): u for products alone.</summary>
    public const double BFloat16Floor = 1.0 / 256;

    /// <summary>The floor for modules with batch norm or max pooling: 2⁻⁴.</summary>
    public const double BFloat16ConditionedFloor = 1.0 / 16;

    /// <summary>Batch of the bf16 comparisons.</summary>
    public static int BFloat16Batch = 32;

    public const string BFloat16Explanation =
        "bf16 gradients (float32 parameters, bf16 products and activations) disagree with float64 by more than bf16's rounding explains: " +
        "a fault in libtorch's bf16 kernels on this CPU, or a float32 value that the mixed-precision casts (MixedPrecision.cs) lost";

    /// <summary>The case in <paramref name="precision"/> against float64 at 2 threads: the failures, and the largest error
    /// of any tensor relative to its scale.</summary>
    public static (List<string> Failures, double Largest) CompareInBFloat16(ModuleGradientTests.Case c, TrainingPrecision precision, int seed = 11,
        bool channelsLast = false)
    {
        int before = get_num_threads();
        set_num_threads(2);
        try
        {
            Dictionary<string, double[]> low;
            // A batch of BFloat16Batch: batch norm over a handful of values is ill-conditioned (its backward subtracts
            // the gradient's projection on the batch's mean and normalised values), which float32 hides and bf16 does not.
            var batch = c with { Input = c.Input.Select((d, i) => i == 0 ? BFloat16Batch : d).ToArray() };
            using (MixedPrecision.Enter(precision)) low = Gradients(batch, float32, seed, channelsLast, randomInput: true);
            var g64 = Gradients(batch, float64, seed, channelsLast: false, randomInput: true);
            // The whole gradient's norm: a gradient made small by cancellation (a weight that feeds batch norm, whose
            // output does not change with the weight's scale) keeps the absolute error of the large terms it cancels.
            double globalNorm = Math.Sqrt(g64.Values.Sum(g => g.Sum(v => v * v)));
            bool conditioned;
            using (var probe = c.Build())
                conditioned = probe.modules().Any(m => m is TorchSharp.Modules.BatchNorm or TorchSharp.Modules.MaxPool2d);
            var (tolerance, floor) = conditioned ? (BFloat16ConditionedTolerance, BFloat16ConditionedFloor) : (BFloat16Tolerance, BFloat16Floor);
            var failures = new List<string>();
            double largest = 0;
            foreach (var (tensorName, reference) in g64)
            {
                if (!low.TryGetValue(tensorName, out var candidate)) { failures.Add($"{tensorName}: no bf16 gradient"); continue; }
                if (candidate.Any(v => !double.IsFinite(v))) { failures.Add($"{tensorName}: bf16 gradient not finite"); continue; }
                // Norm-wise: a ReLU whose input is within bf16's rounding of zero switches in one computation and not in
                // the other, which moves single elements by their whole size but the tensor's norm by little.
                double error = Math.Sqrt(candidate.Zip(reference, (a, b) => (a - b) * (a - b)).Sum());
                double scale = Math.Sqrt(reference.Sum(b => b * b));
                largest = Math.Max(largest, error / globalNorm);
                if (error > tolerance * scale + floor * globalNorm)
                    failures.Add(FormattableString.Invariant(
                        $"{tensorName}: error norm {error:g3} against float64 gradients of norm {scale:g3} (the module's: {globalNorm:g3}; ") +
                        FormattableString.Invariant($"tolerance {tolerance:g3} of the first and {floor:g3} of the second") +
                        (conditioned ? ", with batch norm or max pooling)" : ")"));
            }
            return (failures, largest);
        }
        finally
        {
            set_num_threads(before);
        }
    }

    public const string Explanation =
        "The float32 CPU kernels of libtorch (oneDNN) disagree with its float64 path on this CPU, a backend fault, not a Man.ML one " +
        "(see docs/BACKEND.md; `manml doctor` shows this machine's ISA and which convolution shapes are wrong)";

    public static List<string> Compare(ModuleGradientTests.Case c, int threads, int seed = 11, bool channelsLast = false)
    {
        int before = get_num_threads();
        set_num_threads(threads);
        try
        {
            var g32 = Gradients(c, float32, seed, channelsLast);
            var g64 = Gradients(c, float64, seed, channelsLast: false);
            double global = g64.Values.Max(g => g.Max(Math.Abs));
            var failures = new List<string>();
            foreach (var (tensorName, reference) in g64)
            {
                if (!g32.TryGetValue(tensorName, out var candidate)) { failures.Add($"{tensorName}: no float32 gradient"); continue; }
                if (candidate.Any(v => !double.IsFinite(v))) { failures.Add($"{tensorName}: float32 gradient not finite"); continue; }
                double error = candidate.Zip(reference, (a, b) => Math.Abs(a - b)).Max();
                double scale = reference.Max(Math.Abs);
                if (error > RelativeTolerance * scale + FloorTolerance * global)
                    failures.Add(FormattableString.Invariant($"{tensorName}: largest error {error:g3} against float64 gradients of size {scale:g3}"));
            }
            return failures;
        }
        finally
        {
            set_num_threads(before);
        }
    }

    // d loss / d input and d loss / d every trainable parameter, as float64 arrays by name.
    private static Dictionary<string, double[]> Gradients(ModuleGradientTests.Case c, ScalarType dtype, int seed, bool channelsLast,
        bool randomInput = false)
    {
        using var scope = NewDisposeScope();
        manual_seed(seed);
        using var module = c.Build();
        module.to(dtype);
        module.train();
        var x = (randomInput
                ? randn(c.Input, dtype: float64, generator: new Generator((ulong)seed + 1000))
                : HeldScalars.Arange(c.Input.Aggregate(1L, (a, b) => a * b), float64).TimesInPlace(0.7).cos_().view(c.Input)).to(dtype);
        if (channelsLast && x.dim() == 4)
        {
            x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);
            Assert.IsTrue(ActivationLayouts.IsChannelsLast(x));
        }
        x.requires_grad_(true);
        var loss = c.Loss(module, x);
        loss.backward();
        var result = new Dictionary<string, double[]> { ["input"] = Values(x.grad!) };
        foreach (var (name, p) in module.named_parameters())
            if (p.requires_grad && p.grad is { } g) result[name] = Values(g);
        return result;
    }

    private static double[] Values(Tensor t) => t.detach().to(float64).cpu().data<double>().ToArray();
}
