// The convolution routes (ConvolutionRouting), the fault probe and the backend check (BackendCheck), each against an
// independent computation: a direct float64 loop for the probe, plain libtorch for the routes' forward values, and a
// deliberately wrong convolution for the check's failure path (so that it is exercised on every machine).
using Man.ML.Backend;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class BackendTests
{
    private static readonly long[] Small = { 3, 16, 3, 3 }, Block = { 16, 16, 3, 3 }, Pointwise = { 32, 16, 1, 1 };

    [TestMethod]
    public void RoutesFollowThePolicyTheDeviceAndTheShape()
    {
        ConvolutionRoute Route(ConvolutionWorkaround policy, long[] weight, int stride = 1, int padding = 1, bool gradient = true,
            DeviceType device = DeviceType.CPU, int groups = 1) =>
            ConvolutionRouting.RouteFor(policy, device, gradient, weight, stride, padding, groups);

        // Never: libtorch as is, whatever the shape.
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Never, Small));
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Never, Pointwise, stride: 2, padding: 0));
        // Always: both rewrites, on any device, only where an input gradient is taken.
        // Few outputs at stride 1 ("same" padding): 3·9 = 27 tap maps, shifted taps; strided, or too many tap maps: padded.
        Assert.AreEqual(ConvolutionRoute.ShiftedTaps, Route(ConvolutionWorkaround.Always, Small));
        Assert.AreEqual(ConvolutionRoute.ShiftedTaps, Route(ConvolutionWorkaround.Always, Small, device: DeviceType.CUDA));
        Assert.AreEqual(ConvolutionRoute.PaddedOutputChannels, Route(ConvolutionWorkaround.Always, Small, stride: 2));
        Assert.AreEqual(ConvolutionRoute.PaddedOutputChannels, Route(ConvolutionWorkaround.Always, Small, padding: 0));
        Assert.AreEqual(ConvolutionRoute.PaddedOutputChannels, Route(ConvolutionWorkaround.Always, new long[] { 12, 16, 3, 3 }), "108 tap maps");
        Assert.AreEqual(ConvolutionRoute.ShiftedTaps, Route(ConvolutionWorkaround.Always, new long[] { 10, 64, 1, 1 }, padding: 0), "a 1x1 with 10 outputs");
        Assert.AreEqual(ConvolutionRoute.SubsampledInput, Route(ConvolutionWorkaround.Always, Pointwise, stride: 2, padding: 0));
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Always, Small, gradient: false));
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Always, Block));
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Always, Pointwise, stride: 2, padding: 1), "a padded 1x1 is not a subsampling");
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Always, new long[] { 12, 1, 3, 3 }, groups: 12), "grouped: not padded");
        // Auto: the CPU only; strided 1x1 always, small outputs where the probe found the fault.
        Assert.AreEqual(ConvolutionRoute.SubsampledInput, Route(ConvolutionWorkaround.Auto, Pointwise, stride: 2, padding: 0));
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Auto, Pointwise, stride: 2, padding: 0, device: DeviceType.CUDA));
        Assert.AreEqual(ConvolutionRouting.SmallOutputChannelFault ? ConvolutionRoute.ShiftedTaps : ConvolutionRoute.Direct,
            Route(ConvolutionWorkaround.Auto, Small));
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Auto, Block));
        // Channels-last inputs: every 1x1 convolution without padding is a matrix product, strided or not, with or
        // without an input gradient, on any device; unless the policy is Never.
        ConvolutionRoute Last(ConvolutionWorkaround policy, long[] weight, int stride = 1, int padding = 0, bool gradient = true) =>
            ConvolutionRouting.RouteFor(policy, DeviceType.CPU, gradient, weight, stride, padding, 1, channelsLast: true);
        Assert.AreEqual(ConvolutionRoute.PointwiseProduct, Last(ConvolutionWorkaround.Auto, Pointwise, stride: 2));
        Assert.AreEqual(ConvolutionRoute.PointwiseProduct, Last(ConvolutionWorkaround.Auto, Pointwise, gradient: false));
        Assert.AreEqual(ConvolutionRoute.PointwiseProduct, Last(ConvolutionWorkaround.Always, new long[] { 1024, 512, 1, 1 }));
        Assert.AreEqual(ConvolutionRoute.Direct, Last(ConvolutionWorkaround.Never, Pointwise));
        Assert.AreEqual(ConvolutionRoute.Direct, Last(ConvolutionWorkaround.Auto, Block, padding: 1));
    }

    [TestMethod]
    public void EveryRouteComputesTheSameOutputAsLibTorch()
    {
        manual_seed(3);
        foreach (var (weight, stride, padding, side) in new[] { (Small, 1, 1, 9), (Small, 2, 1, 9), (Pointwise, 2, 0, 9), (Pointwise, 3, 0, 10),
                     (new long[] { 5, 16, 1, 1 }, 1, 0, 7), (new long[] { 1, 16, 5, 5 }, 1, 2, 8) })
        {
            using var x = randn(4, 16, side, side, requires_grad: true);
            using var w = randn(weight).TimesInPlace(0.1);
            using var b = randn(weight[0]);
            using var expected = nn.functional.conv2d(x, w, b, new long[] { stride, stride }, new long[] { padding, padding });
            // Subsampling is what a strided 1x1 convolution without padding is; padding the outputs applies to any shape.
            var routes = weight[2] == 1 && padding == 0 && stride > 1
                ? new[] { ConvolutionRoute.Direct, ConvolutionRoute.PaddedOutputChannels, ConvolutionRoute.SubsampledInput }
                : stride == 1 && padding == weight[2] / 2
                    ? new[] { ConvolutionRoute.Direct, ConvolutionRoute.PaddedOutputChannels, ConvolutionRoute.ShiftedTaps }
                    : new[] { ConvolutionRoute.Direct, ConvolutionRoute.PaddedOutputChannels };
            foreach (var route in routes)
            {
                using var y = ConvolutionRouting.Convolve(x, w, b, stride, padding, 1, route);
                CollectionAssert.AreEqual(expected.shape, y.shape, $"{route} on {string.Join("x", weight)} stride {stride}");
                Assert.IsTrue(y.allclose(expected, rtol: 1e-5, atol: 1e-5), $"{route} on {string.Join("x", weight)} stride {stride}: forward differs");
                Assert.IsTrue(y.is_contiguous(), $"{route}: the output must not be a view of a larger padded map");
            }
        }
    }

    [TestMethod]
    public void EveryRouteGivesLibTorchsFloat64Gradients()
    {
        // Each route's input, weight and bias gradients in float64 against libtorch's own float64 convolution (its
        // reference kernels, not oneDNN): the rewrites are exact, so they agree to rounding.
        foreach (var (weight, stride, padding, routes) in new[]
                 {
                     (Small, 1, 1, new[] { ConvolutionRoute.PaddedOutputChannels, ConvolutionRoute.ShiftedTaps }),
                     (new long[] { 1, 16, 5, 5 }, 1, 2, new[] { ConvolutionRoute.ShiftedTaps }),
                     (new long[] { 5, 16, 1, 1 }, 1, 0, new[] { ConvolutionRoute.ShiftedTaps }),
                     (Small, 2, 1, new[] { ConvolutionRoute.PaddedOutputChannels }),
                     (Pointwise, 2, 0, new[] { ConvolutionRoute.SubsampledInput, ConvolutionRoute.PointwiseProduct }),
                     (Pointwise, 1, 0, new[] { ConvolutionRoute.PointwiseProduct }),
                     (new long[] { 10, 16, 1, 1 }, 3, 0, new[] { ConvolutionRoute.PointwiseProduct }),
                 })
        {
            using var scope = NewDisposeScope();
            Tensor Data(long[] shape, double frequency) => ConvolutionRouting.Pattern(shape, frequency);
            (Tensor X, Tensor W, Tensor B) Gradients(ConvolutionRoute route)
            {
                var x = Data(new long[] { 3, 16, 9, 9 }, 0.7);
                if (route == ConvolutionRoute.PointwiseProduct) x = ActivationLayouts.ToChannelsLast(x); // the layout it is taken for
                x.requires_grad_(true);
                var w = Data(weight, 1.3).TimesInPlace(0.1).requires_grad_(true);
                var b = Data(new[] { weight[0] }, 2.1).requires_grad_(true);
                var y = ConvolutionRouting.Convolve(x, w, b, stride, padding, 1, route);
                (y * Data(y.shape, 0.37)).sum().backward();
                return (x.grad!, w.grad!, b.grad!);
            }
            var reference = Gradients(ConvolutionRoute.Direct);
            foreach (var route in routes)
            {
                var got = Gradients(route);
                foreach (var (name, g, r) in new[] { ("input", got.X, reference.X), ("weight", got.W, reference.W), ("bias", got.B, reference.B) })
                    Assert.IsLessThan(1e-12, (g - r).abs().max().item<double>() / r.abs().max().item<double>(),
                        $"{route} on {string.Join("x", weight)} stride {stride}: {name} gradient differs from libtorch's float64 one");
            }
        }
    }

    [TestMethod]
    public void TheFaultProbeAgreesWithADirectFloat64Computation()
    {
        // The probe's verdict (libtorch's float32 input gradient against conv_transpose2d in float64) recomputed here with
        // a plain loop in float64, for the same shapes and thread counts.
        int threads = get_num_threads();
        bool faultFound = false;
        try
        {
            foreach (int t in threads == 1 ? new[] { 1 } : new[] { 1, threads })
            {
                set_num_threads(t);
                foreach (var (cin, cout) in new[] { (16, 3), (16, 12), (12, 3) })
                    for (int phase = 0; phase < 2; phase++)
                        faultFound |= !LibTorchInputGradientMatchesLoop(cin, cout, 8, 2, phase);
            }
        }
        finally
        {
            set_num_threads(threads);
        }
        Assert.AreEqual(faultFound, ConvolutionRouting.SmallOutputChannelFault,
            "the once-per-process probe disagrees with a direct computation of the same input gradients");
    }

    // Input gradient of a 3x3 convolution (padding 1) by libtorch in float32, against the sum written out in float64:
    // dx[b, i, p, q] = Σ_o Σ_ky Σ_kx gy[b, o, p − ky + 1, q − kx + 1] · w[o, i, ky, kx].
    private static bool LibTorchInputGradientMatchesLoop(int cin, int cout, int side, int batch, int phase)
    {
        static double[] Pattern(int n, double f) => Enumerable.Range(0, n).Select(i => Math.Sin(i * f)).ToArray();
        var x = Pattern(batch * cin * side * side, 0.7 + phase);
        var w = Pattern(cout * cin * 9, 1.3 + phase).Select(v => v * 0.1).ToArray();
        var gy = Pattern(batch * cout * side * side, 0.9 + phase);
        using var xt = tensor(x.Select(v => (float)v).ToArray(), new long[] { batch, cin, side, side }).requires_grad_(true);
        using var wt = tensor(w.Select(v => (float)v).ToArray(), new long[] { cout, cin, 3, 3 });
        using var gyt = tensor(gy.Select(v => (float)v).ToArray(), new long[] { batch, cout, side, side });
        using (var y = nn.functional.conv2d(xt, wt, padding: new long[] { 1, 1 })) y.backward(new[] { gyt });
        var got = xt.grad!.data<float>().ToArray();
        double largest = 0, error = 0;
        for (int b = 0; b < batch; b++)
        for (int i = 0; i < cin; i++)
        for (int p = 0; p < side; p++)
        for (int q = 0; q < side; q++)
        {
            double sum = 0;
            for (int o = 0; o < cout; o++)
            for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++)
            {
                int r = p - ky + 1, c = q - kx + 1;
                if (r < 0 || r >= side || c < 0 || c >= side) continue;
                sum += gy[((b * cout + o) * side + r) * side + c] * w[((o * cin + i) * 3 + ky) * 3 + kx];
            }
            double value = got[((b * cin + i) * side + p) * side + q];
            if (!double.IsFinite(value)) return false;
            largest = Math.Max(largest, Math.Abs(sum));
            error = Math.Max(error, Math.Abs(value - sum));
        }
        return error <= 1e-3 * largest;
    }

    [TestMethod]
    public void TheCheckFindsEveryShapeOfAConfigurationAndPassesOnTheRoutesTrainingTakes()
    {
        manual_seed(1);
        using var net = new CifarResNet(8);
        var plan = SplitPlan.Create(net, 2);
        using var trainer = new LocalTrainer(net, plan, new InfoProRule(new InfoProSettings()), new MomentumOptions(), new OptimizerSettings(), CPU);
        trainer.SetTraining(true);
        var before = net.parameters().Concat(trainer.AuxiliaryModule.parameters()).Concat(net.buffers()).Select(p => p.clone()).ToList();
        using var rng = get_rng_state();

        var report = BackendCheck.Run(trainer);

        // Shapes: the stem (weight gradient only: its input is the image), the blocks' inner convolutions, MAN's copies
        // of layer2[0] with its strided 1x1 projection, InfoPro's decoder (16 → 12 → 3) and 2c2f classifier.
        var names = report.Convolutions.ToDictionary(c => c.Shape.ToString(), c => c);
        Assert.IsFalse(names["conv 3→16 3x3 stride 1 padding 1 at 32x32 (weight gradient only)"].Shape.InputGradient);
        // Channels-last (the default for CIFAR networks on the CPU): a 1x1 convolution is a matrix product.
        Assert.AreEqual(net.ChannelsLastOn(DeviceType.CPU) ? ConvolutionRoute.PointwiseProduct : ConvolutionRoute.SubsampledInput,
            names["conv 16→32 1x1 stride 2 padding 0 at 32x32"].Route);
        CollectionAssert.Contains(names["conv 16→32 1x1 stride 2 padding 0 at 32x32"].Layers.ToList(), "auxiliary.man.branches.0.learnable.downsample.0");
        Assert.AreEqual(ConvolutionRouting.SmallOutputChannelFault ? ConvolutionRoute.ShiftedTaps : ConvolutionRoute.Direct,
            names["conv 12→3 3x3 stride 1 padding 1 at 32x32"].Route);
        CollectionAssert.Contains(names["conv 12→3 3x3 stride 1 padding 1 at 32x32"].Layers.ToList(), "auxiliary.heads.0.decoder.3");
        Assert.IsTrue(names.ContainsKey("conv 32→32 3x3 stride 1 padding 1 at 16x16"), "the 2c2f classifier's second convolution");
        Assert.IsTrue(report.Correct,
            string.Join("; ", report.Convolutions.Where(c => !c.Correct).Select(c => $"{c.Shape}: {c.InputGradientError}, {c.WeightGradientError}")) +
            ". " + GradientComparison.Explanation);
        report.EnsureCorrect();
        Assert.IsTrue(report.Environment.Threads >= 1 && report.Environment.LibTorch.Length > 0 && report.Environment.Cpu.Length > 0);

        // The check leaves the trainer, its statistics and the random generator as they were.
        var after = net.parameters().Concat(trainer.AuxiliaryModule.parameters()).Concat(net.buffers()).ToList();
        Assert.IsTrue(before.Zip(after).All(p => p.First.eq(p.Second).all().item<bool>()), "the check changed a parameter or statistic");
        Assert.IsTrue(net.training, "the check must restore training mode");
        using var rngAfter = get_rng_state();
        Assert.IsTrue(rng.eq(rngAfter).all().item<bool>(), "the check drew from the random generator");
        foreach (var t in before) t.Dispose();
    }

    [TestMethod]
    public void AWrongGradientStopsWithTheLayerTheShapeAndTheRemedy()
    {
        // A convolution whose forward value is right but whose gradients are those of other weights: the kind of fault
        // libtorch has on affected CPUs, made here on purpose so that the failure path runs on every machine. (16 output
        // channels: a shape libtorch itself computes correctly everywhere measured, so only the deliberate fault shows.)
        var shape = new ConvolutionShape(16, 16, 3, 1, 1, 1, true, 8, 8, InputGradient: true);
        var wrong = BackendCheck.Check(shape, new[] { "auxiliary.heads.0.decoder.0", "auxiliary.heads.1.decoder.0" },
            CPU, ConvolutionWorkaround.Auto, (x, w, b, s) =>
        {
            var right = nn.functional.conv2d(x, w, b, padding: new long[] { 1, 1 });
            var other = nn.functional.conv2d(x, w.flip(2), b, padding: new long[] { 1, 1 });
            return right.detach().Plus(other) - other.detach();
        });
        Assert.IsFalse(wrong.Correct);
        Assert.IsTrue(wrong.OutputError < 1e-5, $"the forward value was right (error {wrong.OutputError})");
        Assert.IsTrue(wrong.InputGradientError > 0.1 && wrong.WeightGradientError > 0.1, $"errors {wrong.InputGradientError}, {wrong.WeightGradientError}");
        var report = new BackendReport(BackendCheck.DescribeEnvironment(), "cpu", new[] { wrong }, 0.01);
        var e = Assert.ThrowsExactly<BackendFaultException>(report.EnsureCorrect);
        StringAssert.Contains(e.Message, "conv 16→16 3x3 stride 1 padding 1 at 8x8");
        StringAssert.Contains(e.Message, "auxiliary.heads.0.decoder.0 and 1 more layers");
        StringAssert.Contains(e.Message, "input gradient off by");
        StringAssert.Contains(e.Message, "ONEDNN_MAX_CPU_ISA=AVX");
        Assert.AreSame(report, e.Report);

        // A NaN gradient is reported as not finite.
        var nan = BackendCheck.Check(shape, new[] { "layer" }, CPU, ConvolutionWorkaround.Auto, (x, w, b, s) =>
        {
            var y = nn.functional.conv2d(x, w, b, padding: new long[] { 1, 1 });
            return y.detach().Plus((y - y.detach()).Times(double.NaN));
        });
        Assert.IsTrue(double.IsNaN(nan.InputGradientError) && !nan.Correct);
        StringAssert.Contains(Assert.ThrowsExactly<BackendFaultException>(() =>
            new BackendReport(BackendCheck.DescribeEnvironment(), "cpu", new[] { nan }, 0).EnsureCorrect()).Message, "not finite");

        // The same fault found on a GPU names that device, not this machine's CPU or oneDNN, and gives no CPU remedy.
        var onGpu = new BackendReport(BackendCheck.DescribeEnvironment(), "cuda:0, cpu", new[] { wrong with { Device = "cuda:0" } }, 0.01);
        var gpu = Assert.ThrowsExactly<BackendFaultException>(onGpu.EnsureCorrect).Message;
        StringAssert.Contains(gpu, "wrong convolution gradient on cuda:0: conv 16→16 3x3");
        StringAssert.Contains(gpu, "no workaround of Man.ML covers this shape on cuda:0");
        Assert.IsFalse(gpu.Contains("oneDNN", StringComparison.Ordinal) || gpu.Contains("ONEDNN_MAX_CPU_ISA", StringComparison.Ordinal), gpu);
    }

    [TestMethod]
    public void EachStageDevicesShapesAreTracedOnThatDevice()
    {
        // A pipelined network's segments sit on their stages' devices; the check traces each segment where it runs and
        // groups the shapes by device (two CPU "devices" here: one group, the shapes of the whole network).
        var trainer = new Trainer(new TrainingOptions { PipelineStages = 2, StageDevices = new[] { "cpu", "cpu" } });
        using var local = trainer.CreateLocalTrainer(10, 32);
        var byDevice = BackendCheck.ShapesByDevice(local);
        Assert.HasCount(1, byDevice);
        Assert.AreEqual("cpu", byDevice[0].Device.ToString());
        CollectionAssert.AreEquivalent(BackendCheck.Shapes(local).Keys.ToList(), byDevice[0].Shapes.Keys.ToList());
        var report = BackendCheck.Run(local);
        Assert.IsTrue(report.Convolutions.All(c => c.Device == "cpu") && report.Device == "cpu", report.Device);
    }

    [TestMethod]
    public void TrainingRunsTheCheckOnceAndItCanBeTurnedOff()
    {
        using var data = TestSupport.SampleImages(0, 64);
        var options = new TrainingOptions { Architecture = "resnet8", K = 2, Rule = LearningRule.InfoPro, Epochs = 1, BatchSize = 32, Seed = 2 };
        var checkedRun = new Trainer(options);
        using (var result = checkedRun.Train(data, null).Network) { }
        Assert.IsNotNull(checkedRun.BackendReport);
        Assert.IsTrue(checkedRun.BackendReport.Convolutions.Count > 5 && checkedRun.BackendReport.Correct);
        var unchecked_ = new Trainer(options) { CheckBackend = false };
        using (var result = unchecked_.Train(data, null).Network) { }
        Assert.IsNull(unchecked_.BackendReport);
    }

    [TestMethod]
    public void TheWorkaroundIsParsedWithAClearMessage()
    {
        Assert.AreEqual(ConvolutionWorkaround.Always, ConvolutionRouting.Parse(" Always "));
        Assert.AreEqual(ConvolutionWorkaround.Never, ConvolutionRouting.Parse("never"));
        StringAssert.Contains(Assert.ThrowsExactly<InvalidOptionException>(() => ConvolutionRouting.Parse("sometimes")).Message, "auto, always, never");
    }

    [TestMethod]
    public void EachNetworkCarriesItsOwnWorkaroundAndTheCheckFollowsIt()
    {
        // Two networks with opposite policies in one process: each routes its own convolutions (and its heads' and MAN
        // copies') by its own policy, and the check checks each under that policy.
        var routes = new Dictionary<ConvolutionWorkaround, BackendReport>();
        foreach (var policy in new[] { ConvolutionWorkaround.Never, ConvolutionWorkaround.Always })
        {
            var options = new TrainingOptions { Architecture = "resnet8", K = 2, Rule = LearningRule.InfoPro,
                BatchSize = 32, Seed = 3, ConvolutionWorkaround = policy };
            using var local = new Trainer(options).CreateLocalTrainer(10, 32);
            try
            {
                Assert.AreEqual(policy, local.Network.Workaround);
                var convs = local.Network.modules().Concat(local.AuxiliaryModule.modules()).OfType<Conv2dLayer>().ToList();
                Assert.IsTrue(convs.Count > 10 && convs.All(c => c.Workaround == policy),
                    "every convolution of the run, heads and MAN's copies included, follows the run's policy");
                routes[policy] = BackendCheck.EnsureCorrect(local);
                Assert.AreEqual(policy, routes[policy].Environment.Workaround);
            }
            finally { local.Network.Dispose(); }
        }
        ConvolutionRoute Route(ConvolutionWorkaround policy, string shape) => routes[policy].Convolutions.Single(c => c.Shape.ToString() == shape).Route;
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Never, "conv 12→3 3x3 stride 1 padding 1 at 32x32"));
        Assert.AreEqual(ConvolutionRoute.ShiftedTaps, Route(ConvolutionWorkaround.Always, "conv 12→3 3x3 stride 1 padding 1 at 32x32"));
        Assert.AreEqual(ConvolutionRoute.Direct, Route(ConvolutionWorkaround.Never, "conv 16→32 1x1 stride 2 padding 0 at 32x32"));

        // The layout is the network's too: channels-first here, so the strided 1x1 projection (of MAN's copy of layer2[0])
        // is subsampled, not a matrix product.
        using var nchw = Architectures.Create("resnet8", 10, 32,
            new BackendOptions { Workaround = ConvolutionWorkaround.Always, Layout = ActivationLayout.ChannelsFirst });
        Assert.IsFalse(nchw.ChannelsLastOn(DeviceType.CPU));
        using var trainer = new LocalTrainer(nchw, SplitPlan.Create(nchw, 2), new InfoProRule(new InfoProSettings()),
            new MomentumOptions(), new OptimizerSettings(), CPU);
        var report = BackendCheck.Run(trainer);
        Assert.AreEqual(ConvolutionRoute.SubsampledInput,
            report.Convolutions.Single(c => c.Shape.ToString() == "conv 16→32 1x1 stride 2 padding 0 at 32x32").Route);
        Assert.IsTrue(report.Correct, GradientComparison.Explanation);

        // Built without a choice, a network takes the process default.
        using var plain = Architectures.Create("resnet8");
        Assert.AreEqual(ConvolutionRouting.DefaultWorkaround, plain.Workaround);
        Assert.AreEqual(ActivationLayouts.DefaultLayout, plain.Layout);
    }

    [TestMethod]
    public void TheLibraryLeavesTheHeapAloneUnlessTheApplicationAsks()
    {
        // Nothing in the library calls HeapTuning.Apply (only this test does, in this process): creating a trainer leaves
        // the process's allocator as it was.
        using (var local = new Trainer(new TrainingOptions { Architecture = "resnet8", K = 1, Rule = LearningRule.EndToEnd, Man = null })
            .CreateLocalTrainer(10, 32))
            local.Network.Dispose();
        Assert.IsFalse(HeapTuning.Applied, "creating a trainer must not tune the process's heap");

        bool applied = HeapTuning.Apply();
        Assert.AreEqual(applied, HeapTuning.Applied);
        bool userChose = new[] { "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES" }
                         .Any(v => Environment.GetEnvironmentVariable(v) is not null)
                         || string.Equals(Environment.GetEnvironmentVariable(HeapTuning.EnvironmentVariable), "off", StringComparison.OrdinalIgnoreCase);
        if (!OperatingSystem.IsLinux() || userChose)
            Assert.IsFalse(applied, "the heap must be left as the environment set it");
        else
            Assert.IsTrue(applied, "on Linux with glibc, the application's call keeps freed activation buffers in the heap (mallopt)");
        Assert.AreEqual(applied, HeapTuning.Apply(), "a second call changes nothing");
    }
}
