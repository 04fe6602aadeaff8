// bf16 mixed precision (MixedPrecision.cs, docs/PRECISION.md): the choice in options, plan and checkpoints; the refusal
// where the CPU has no bf16 instructions; the kernels the gradient tests do not isolate (batch norm on bf16 maps); what
// stays float32; the backend check in bf16; and exact resume of a bf16 run.
using System.Diagnostics;
using System.Text.Json.Nodes;
using Man.ML.Backend;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class PrecisionTests
{
    private const double U = 1.0 / 256; // bf16's unit roundoff: 8 significant bits

    private static TrainingOptions Tiny(TrainingPrecision precision) =>
        new() { Architecture = "resnet8", K = 2, Epochs = 3, BatchSize = 32, Seed = 3, Precision = precision };

    // Runs native bf16 on this CPU whatever it has (libtorch's fallback kernels where it has no bf16 instructions).
    private static T OnAnyCpu<T>(Func<T> action)
    {
        bool before = BFloat16Support.AllowAnyCpu;
        BFloat16Support.AllowAnyCpu = true;
        try { return action(); }
        finally { BFloat16Support.AllowAnyCpu = before; }
    }

    private static string CpuNote => BFloat16Support.Cpu
        ? "this CPU has bf16 instructions (avx512_bf16 or amx_bf16)"
        : "this CPU has no bf16 instructions (neither avx512_bf16 nor amx_bf16)";

    [TestMethod]
    public void LinearLayerInitialisesAsNnLinearDoes()
    {
        // Seeded runs initialise as they did with TorchSharp's nn.Linear: the same draws in the same order.
        foreach (var (inputs, outputs, bias) in new[] { (64, 10, true), (128, 128, false), (3, 7, true) })
        {
            manual_seed(42);
            using var reference = nn.Linear(inputs, outputs, hasBias: bias);
            manual_seed(42);
            using var layer = new LinearLayer(inputs, outputs, bias);
            Assert.IsTrue(reference.weight!.eq(layer.Weight).all().item<bool>(), $"weight {inputs}→{outputs}");
            if (bias) Assert.IsTrue(reference.bias!.eq(layer.Bias!).all().item<bool>(), $"bias {inputs}→{outputs}");
            else Assert.IsNull(layer.Bias);
            using var x = randn(5, inputs);
            Assert.IsTrue(reference.call(x).eq(layer.call(x)).all().item<bool>(), "float32 forward");
            CollectionAssert.AreEqual(reference.named_parameters().Select(p => p.name).ToArray(),
                layer.named_parameters().Select(p => p.name).ToArray(), "state-dict names");
        }
    }

    [TestMethod]
    [DataRow(new long[] { 32, 16, 8, 8 })]
    [DataRow(new long[] { 32, 64, 2, 2 })]
    [DataRow(new long[] { 32, 128 })]
    public void BatchNormOnABFloat16MapMatchesFloat64OnTheSameValues(long[] shape)
    {
        // libtorch's batch norm takes a bf16 input with float32 weights and statistics in a bf16 run. Against float64 on
        // the same (bf16-rounded) input and output gradient, only the rounding of its bf16 results is left: ≤ u each,
        // about u/√3 norm-wise; 2u is the tolerance. Its float32 weight gradients are accumulated in float32.
        using var scope = NewDisposeScope();
        var generator = new Generator(5);
        var x = randn(shape, dtype: float64, generator: generator).to(ScalarType.BFloat16).to(float64);
        var g = randn(shape, dtype: float64, generator: generator).to(ScalarType.BFloat16).to(float64);
        nn.Module<Tensor, Tensor> Make() => shape.Length == 4 ? nn.BatchNorm2d(shape[1]) : nn.BatchNorm1d(shape[1]);
        var mixed = Make();
        var exact = Make();
        exact.to(float64);
        var xb = x.to(ScalarType.BFloat16).requires_grad_(true);
        var yb = mixed.call(xb);
        yb.backward(new[] { g.to(ScalarType.BFloat16) });
        var xd = x.clone().requires_grad_(true);
        var yd = exact.call(xd);
        yd.backward(new[] { g });
        static double Error(Tensor a, Tensor b) => (a.to(float64) - b).norm().item<double>() / b.norm().item<double>();
        Assert.AreEqual(ScalarType.BFloat16, yb.dtype, "a bf16 map in, a bf16 map out");
        Assert.AreEqual(ScalarType.Float32, mixed.parameters().First().grad!.dtype, "weight gradients stay float32");
        Assert.IsLessThan(2 * U, Error(yb, yd), "output");
        Assert.IsLessThan(2 * U, Error(xb.grad!, xd.grad!), "input gradient");
        foreach (var (m, e) in mixed.parameters().Zip(exact.parameters()))
            Assert.IsLessThan(2 * U, Error(m.grad!, e.grad!), "weight and bias gradients");
        // The running statistics stay float32 and move like float64's.
        var running = mixed.buffers().First();
        Assert.AreEqual(ScalarType.Float32, running.dtype);
        Assert.IsLessThan(2 * U, Error(running, exact.buffers().First()), "running mean");
    }

    [TestMethod]
    public void TheOptionsPlanAndMetricsCarryTheResolvedPrecision()
    {
        Assert.AreEqual(TrainingPrecision.Float32, new TrainingOptions().Precision, "float32 stays the default");
        var plan = RunPlan.Resolve(Tiny(TrainingPrecision.BFloat16Emulated), 10, 32);
        Assert.AreEqual(TrainingPrecision.BFloat16Emulated, plan.Precision);
        Assert.AreEqual("bf16-emulated", plan.ToJson()["precision"]!.GetValue<string>());
        StringAssert.Contains(plan.Summary, "bf16-emulated");
        Assert.AreEqual("fp32", RunPlan.Resolve(Tiny(TrainingPrecision.Float32), 10, 32).ToJson()["precision"]!.GetValue<string>());
        // auto is resolved, never recorded as auto: bf16 where the CPU computes it natively, else float32.
        var auto = RunPlan.Resolve(Tiny(TrainingPrecision.Auto), 10, 32);
        Assert.AreEqual(BFloat16Support.Cpu ? TrainingPrecision.BFloat16 : TrainingPrecision.Float32, auto.Precision, CpuNote);
        Assert.AreEqual(TrainingPrecision.BFloat16, OnAnyCpu(() => RunPlan.Resolve(Tiny(TrainingPrecision.BFloat16), 10, 32)).Precision);
        var unknown = Assert.ThrowsExactly<InvalidOptionException>(
            () => (Tiny(TrainingPrecision.Float32) with { Precision = (TrainingPrecision)9 }).Validate());
        Assert.AreEqual("Precision", unknown.Option);
    }

    [TestMethod]
    public void BFloat16IsRefusedInOneLineOnACpuWithoutBFloat16Instructions()
    {
        if (BFloat16Support.Cpu)
        {
            // Where the CPU has the instructions, the same options are accepted and train in bf16.
            Assert.AreEqual(TrainingPrecision.BFloat16, RunPlan.Resolve(Tiny(TrainingPrecision.BFloat16), 10, 32).Precision, CpuNote);
            return;
        }
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => new Trainer(Tiny(TrainingPrecision.BFloat16)), CpuNote);
        Assert.AreEqual("Precision", e.Option);
        StringAssert.Contains(e.Message, "avx512_bf16");
        StringAssert.Contains(e.Message, "bf16-emulated");
        Assert.IsFalse(e.Message.Contains('\n'), "one line");
        // The command line: exit 2, one line, nothing created.
        var outDir = Path.Combine(TestSupport.NewTempFolder(), "run");
        var r = TestSupport.RunManml(new[]
        {
            "train", "--data", TestSupport.BundledSample, "--train-limit", "64", "--val-split", "32", "--arch", "resnet8", "--k", "2",
            "--epochs", "1", "--batch-size", "32", "--precision", "bf16", "--out", outDir,
        });
        Assert.AreEqual(2, r.ExitCode, r.Stderr + r.Stdout);
        StringAssert.Contains(r.Stderr, "avx512_bf16");
        Assert.AreEqual(1, r.Stderr.Trim().Split('\n').Length, r.Stderr);
        Assert.IsFalse(Directory.Exists(outDir), "a refused run creates no output folder");
        var typo = TestSupport.RunManml(new[] { "train", "--precision", "bf17", "--out", outDir });
        Assert.AreEqual(2, typo.ExitCode);
        StringAssert.Contains(typo.Stderr, "fp32, bf16, auto, bf16-emulated");
    }

    [TestMethod]
    [DataRow(TrainingPrecision.BFloat16)]
    [DataRow(TrainingPrecision.BFloat16Emulated)]
    public void ABFloat16StepKeepsBFloat16MapsAndFloat32ParametersGradientsAndStatistics(TrainingPrecision precision)
    {
        using var train = TestSupport.SampleImages(0, 32);
        var trainer = OnAnyCpu(() => new Trainer(Tiny(precision)));
        using var local = OnAnyCpu(() => trainer.CreateLocalTrainer(10, 32));
        Assert.AreEqual(precision, local.Precision);
        using var scope = NewDisposeScope();
        var x = Data.Normalization.Cifar.Apply(train.Images.to_type(ScalarType.Float32).DividedBy(255));
        var y = train.Labels;
        local.SetTraining(true);
        local.Optimizer.zero_grad();
        var first = local.TrainSegment(0, x, new LocalTargets(y, x));
        Assert.AreEqual(ScalarType.BFloat16, first.Output!.dtype, "the map handed to the next segment is bf16 (half the memory)");
        Assert.IsTrue(float.IsFinite(first.Loss));
        var last = local.TrainSegment(1, first.Output, new LocalTargets(y, x));
        Assert.IsTrue(float.IsFinite(last.Loss));
        foreach (var p in local.Optimizer.parameters())
        {
            Assert.AreEqual(ScalarType.Float32, p.dtype, "master weights are float32");
            if (p.grad is { } g) Assert.AreEqual(ScalarType.Float32, g.dtype, "gradients as the optimizer sees them are float32");
        }
        foreach (var b in local.Network.buffers().Where(b => b.is_floating_point()))
            Assert.AreEqual(ScalarType.Float32, b.dtype, "batch-norm statistics are float32");
        Assert.AreEqual(TrainingPrecision.Float32, MixedPrecision.Current, "the precision scope closes with the segment");
    }

    [TestMethod]
    [DataRow(TrainingPrecision.BFloat16)]
    [DataRow(TrainingPrecision.BFloat16Emulated)]
    public void TheBackendCheckRunsInTheRunsPrecisionAndCatchesAWrongBFloat16Kernel(TrainingPrecision precision)
    {
        var trainer = OnAnyCpu(() => new Trainer(Tiny(precision)));
        using var local = OnAnyCpu(() => trainer.CreateLocalTrainer(10, 32));
        var report = BackendCheck.Run(local);
        Assert.AreEqual(precision, report.Precision);
        Assert.IsTrue(report.Correct, string.Join("; ", report.Convolutions.Where(c => !c.Correct)
            .Select(c => $"{c.Shape}: {c.OutputError}, {c.InputGradientError}, {c.WeightGradientError}")) + ". " + CpuNote);
        // Computed in bf16, not float32: the output is a bf16 rounding away from float64 on the same operands.
        Assert.IsTrue(report.Convolutions.All(c => c.Precision == precision));
        Assert.IsGreaterThan(1e-4, report.Convolutions.Max(c => c.OutputError), "the check must see bf16's rounding");
        local.Network.Dispose();

        // A kernel whose input gradient is off by 10 % (far less than the faults seen) is caught in bf16 as well.
        var shape = new ConvolutionShape(16, 16, 3, 1, 1, 1, false, 8, 8, true);
        var wrong = BackendCheck.Check(shape, new[] { "layer" }, CPU, ConvolutionWorkaround.Auto, (x, w, b, s) =>
        {
            var y = BackendCheck.Candidate(ConvolutionWorkaround.Auto)(x, w, b, s);
            return y.Plus((y - y.detach()).Times(0.1)); // same output, gradient scaled by 1.1
        }, precision: precision);
        Assert.IsFalse(wrong.Correct, $"input gradient error {wrong.InputGradientError} passed the bf16 tolerance {wrong.Tolerance}");
        Assert.AreEqual(BackendCheck.BFloat16Tolerance, wrong.Tolerance);
    }

    private static byte[] Weights(UnitChainNetwork network)
    {
        using var memory = new MemoryStream();
        using (var writer = new BinaryWriter(memory, System.Text.Encoding.UTF8, leaveOpen: true)) network.save(writer);
        return memory.ToArray();
    }

    [TestMethod]
    [DataRow(TrainingPrecision.BFloat16)]
    [DataRow(TrainingPrecision.BFloat16Emulated)]
    public void ABFloat16RunResumedAtAnEpochBoundaryEndsBitForBitWhereTheUninterruptedRunEnds(TrainingPrecision precision)
    {
        var dir = TestSupport.NewTempFolder();
        try
        {
            using var train = TestSupport.SampleImages(0, 96);
            using var val = TestSupport.SampleImages(5000, 40);
            var full = OnAnyCpu(() => new Trainer(Tiny(precision)) { CheckpointPath = Path.Combine(dir, "run.ckpt"), CheckpointEvery = 1 });
            full.CheckpointWritten += (path, epochs) => File.Copy(path, Path.Combine(dir, $"after-{epochs}.ckpt"));
            var reference = OnAnyCpu(() => full.Train(train, val));
            var expected = Weights(reference.Network);
            foreach (var p in reference.Network.parameters()) Assert.AreEqual(ScalarType.Float32, p.dtype, "the trained model is float32");
            var resumed = OnAnyCpu(() => new Trainer(Tiny(precision)) { ResumeFrom = Path.Combine(dir, "after-1.ckpt") }.Train(train, val));
            CollectionAssert.AreEqual(expected, Weights(resumed.Network), $"{precision}: resumed after epoch 1");
            for (int e = 0; e < 3; e++) Assert.AreEqual(reference.Epochs[e].TrainLoss, resumed.Epochs[e].TrainLoss, 0.0, $"epoch {e + 1}");
            // A float32 run cannot continue it: the precision is part of the run.
            var other = Assert.ThrowsExactly<InvalidOptionException>(() =>
                new Trainer(Tiny(TrainingPrecision.Float32)) { ResumeFrom = Path.Combine(dir, "after-1.ckpt") }.Train(train, val));
            Assert.AreEqual("precision", other.Option);
            // And bf16's run is another run than float32's: the same seed ends elsewhere.
            var float32 = new Trainer(Tiny(TrainingPrecision.Float32)).Train(train, val);
            CollectionAssert.AreNotEqual(expected, Weights(float32.Network));
        }
        finally { Directory.Delete(dir, true); }
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void ABFloat16RunKilledAfterACheckpointAndResumedFromTheCommandLineEndsWhereTheUninterruptedRunEnds()
    {
        var root = TestSupport.NewTempFolder();
        try
        {
            var environment = new Dictionary<string, string> { [BFloat16Support.AnyCpuVariable] = "1" };
            string[] Args(string outDir) => new[]
            {
                "train", "--data", TestSupport.BundledSample, "--train-limit", "64", "--val-split", "32", "--arch", "resnet8", "--k", "2",
                "--man", "--epochs", "4", "--batch-size", "32", "--seed", "4", "--precision", "bf16", "--checkpoint-every", "1", "--out", outDir,
            };
            var whole = Path.Combine(root, "whole");
            var r = TestSupport.RunManml(Args(whole), environment);
            Assert.AreEqual(0, r.ExitCode, r.Stderr + r.Stdout);

            var cut = Path.Combine(root, "cut");
            var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            info.ArgumentList.Add(TestSupport.ManmlDll);
            foreach (var a in Args(cut)) info.ArgumentList.Add(a);
            info.Environment[BFloat16Support.AnyCpuVariable] = "1";
            using (var process = Process.Start(info)!)
            {
                _ = process.StandardOutput.ReadToEndAsync();
                _ = process.StandardError.ReadToEndAsync();
                var clock = Stopwatch.StartNew();
                var checkpoint = Path.Combine(cut, "run.ckpt");
                while (!File.Exists(checkpoint) && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(300)) Thread.Sleep(10);
                process.Kill(entireProcessTree: true);
                process.WaitForExit();
                Assert.IsLessThan(4, TrainingCheckpoint.ReadHeader(checkpoint).EpochsCompleted, "killed before the end");
            }
            var resumed = TestSupport.RunManml(new[] { "train", "--resume", cut }, environment);
            Assert.AreEqual(0, resumed.ExitCode, resumed.Stderr + resumed.Stdout);

            var (wholeModel, _) = ModelCheckpoint.Load(Path.Combine(whole, "model.ckpt"));
            var (cutModel, _) = ModelCheckpoint.Load(Path.Combine(cut, "model.ckpt"));
            using (wholeModel)
            using (cutModel)
                CollectionAssert.AreEqual(Weights(wholeModel), Weights(cutModel), "the resumed bf16 run ends where the uninterrupted one ends");
            static JsonArray Epochs(string dir) => JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "metrics.json")))!["epochs"]!.AsArray();
            var (x, y) = (Epochs(whole), Epochs(cut));
            Assert.AreEqual(4, y.Count);
            for (int e = 0; e < 4; e++)
                Assert.AreEqual(x[e]!["train_loss"]!.GetValue<double>(), y[e]!["train_loss"]!.GetValue<double>(), 0.0, $"epoch {e + 1}");
            Assert.AreEqual("bf16", JsonNode.Parse(File.ReadAllText(Path.Combine(cut, "metrics.json")))!["config"]!["precision"]!.GetValue<string>());
        }
        finally { Directory.Delete(root, true); }
    }
}
