using Man.ML.Diagnostics;
using Man.ML.Distributed;
using Man.ML.Local;
using Man.ML.Training;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

/// <summary>What data-parallel training rests on without starting MPI: micro-batches, options, the cost model, and the
/// message when Open MPI is missing.</summary>
[TestClass]
public sealed class DataParallelTests
{
    private static Dictionary<string, Tensor> Parameters(LocalTrainer local) =>
        local.Network.named_parameters().Concat(local.AuxiliaryModule.named_parameters().Select(p => ("aux." + p.name, p.parameter)))
            .ToDictionary(p => p.Item1, p => p.Item2.detach().clone());

    [TestMethod]
    public void AStepOfTwoMicroBatchesMovesTheWeightsByTheMeanOfTwoPlainStepsOnTheHalves()
    {
        // SGD's first step from a zero momentum buffer is linear in the gradient, so the update of the step of two
        // micro-batches (each loss weighted by its half) is the mean of two plain steps on the halves from the same start.
        var options = new TrainingOptions { Architecture = "resnet8", K = 2, Rule = LearningRule.Dgl, Man = new MomentumOptions(), BatchSize = 16, Seed = 7 };
        using var images = TestSupport.SampleImages(0, 16);
        var x = images.Images.to_type(ScalarType.Float32).DividedBy(255);
        var y = images.Labels;
        var halves = new[] { (x.narrow(0, 0, 8), y.narrow(0, 0, 8)), (x.narrow(0, 8, 8), y.narrow(0, 8, 8)) };
        using var split = new Trainer(options).CreateLocalTrainer(10, 32);
        var start = Parameters(split);
        var result = split.Step(x, y, NonFinitePolicy.Stop, 2, 16, null, 0, 0);
        Assert.AreEqual(16, result.Count);
        var moved = Parameters(split);
        var deltas = new List<Dictionary<string, Tensor>>();
        foreach (var (hx, hy) in halves)
        {
            using var plain = new Trainer(options).CreateLocalTrainer(10, 32);
            var before = Parameters(plain);
            foreach (var (name, value) in before) Assert.IsTrue(value.eq(start[name]).all().item<bool>(), $"{name}: trainers of one seed start apart");
            plain.Step(hx, hy);
            deltas.Add(Parameters(plain).ToDictionary(p => p.Key, p => p.Value - before[p.Key]));
        }
        int compared = 0;
        foreach (var (name, value) in moved)
        {
            var expected = deltas[0][name].Plus(deltas[1][name]).DividedBy(2);
            var actual = value - start[name];
            // Updates are differences of float32 weights: each carries up to an ulp of the weight besides the update's own rounding.
            double scale = expected.abs().max().item<float>(), weight = value.abs().max().item<float>();
            double error = (actual - expected).abs().max().item<float>();
            double allowed = 1e-4 * scale + 4.0 * (MathF.BitIncrement((float)weight) - (float)weight) + 1e-12;
            Assert.IsTrue(error <= allowed,
                $"{name}: the micro-batch step's update differs from the halves' mean by {error:E2} (allowed {allowed:E2}, update {scale:E2})");
            compared++;
        }
        Assert.IsTrue(compared > 20, $"only {compared} parameters compared");
    }

    [TestMethod]
    public void OneMicroBatchIsThePlainStepBitForBit()
    {
        var options = new TrainingOptions { Architecture = "resnet8", K = 2, Rule = LearningRule.Dgl, Man = new MomentumOptions(), BatchSize = 16, Seed = 3 };
        using var images = TestSupport.SampleImages(0, 16);
        var x = images.Images.to_type(ScalarType.Float32).DividedBy(255);
        using var a = new Trainer(options).CreateLocalTrainer(10, 32);
        using var b = new Trainer(options).CreateLocalTrainer(10, 32);
        a.Step(x, images.Labels);
        b.Step(x, images.Labels, NonFinitePolicy.Stop, 1, 16, null, 0, 0);
        var pa = Parameters(a);
        foreach (var (name, value) in Parameters(b)) Assert.IsTrue(value.eq(pa[name]).all().item<bool>(), name);
    }

    [TestMethod]
    public void OptionsRefuseMicroBatchesOfFewerThanTwoImagesOrInAPipelineOverMpiAndABadTimeout()
    {
        void Refused(TrainingOptions o, string option, string text)
        {
            var e = Assert.ThrowsExactly<InvalidOptionException>(o.Validate);
            Assert.AreEqual(option, e.Option);
            StringAssert.Contains(e.Message, text);
        }
        Refused(new TrainingOptions { BatchSize = 16, MicroBatches = 9 }, nameof(TrainingOptions.MicroBatches), "half the batch size (8)");
        Refused(new TrainingOptions { MicroBatches = 0 }, nameof(TrainingOptions.MicroBatches), "got 0");
        // A pipeline over MPI (its stages are the ranks) is allowed; micro-batches, which belong to data-parallel runs, are not.
        new TrainingOptions { Distributed = DistributedMode.Mpi, PipelineStages = 2 }.Validate();
        Refused(new TrainingOptions { Distributed = DistributedMode.Mpi, PipelineStages = 2, MicroBatches = 2 }, nameof(TrainingOptions.MicroBatches),
            "--micro-batches 1");
        Refused(new TrainingOptions { CollectiveTimeoutSeconds = 0 }, nameof(TrainingOptions.CollectiveTimeoutSeconds), "positive");
        new TrainingOptions { BatchSize = 16, MicroBatches = 8 }.Validate();
    }

    [TestMethod]
    public void TheCostModelOverlapsEachSegmentsAllReduceWithTheNextSegmentsCompute()
    {
        // By hand: 8 Gbit/s = 1e6 bytes/ms, R = 4, no latency: a ring all-reduce of n bytes takes 2·3·n/4/1e6 ms, so 1.5 ms
        // for 1e6 bytes and 3 ms for 2e6. Segment 0 ends at 10 ms and its sum at 11.5 ms, hidden behind segment 1 (to
        // 30 ms); segment 1's sum starts at 30 ms and ends at 33 ms: 3 of the 4.5 ms are exposed.
        var p = DataParallelCostModel.Predict(new[] { 10.0, 20.0 }, new[] { 1_000_000L, 2_000_000L }, 4, 8, latencyMicroseconds: 0);
        Assert.AreEqual(30, p.ComputeMilliseconds, 1e-9);
        Assert.AreEqual(4.5, p.CommunicationMilliseconds, 1e-9);
        Assert.AreEqual(33, p.StepMilliseconds, 1e-9);
        Assert.AreEqual(3, p.ExposedMilliseconds, 1e-9);
        Assert.AreEqual(1 - 3 / 4.5, p.HiddenFraction, 1e-9);
        Assert.AreEqual(4 * 30 / 33.0, p.SpeedUp(4), 1e-9);
        // Segment 0's sum of 2e7 bytes (30 ms, 10 to 40 ms) is still in flight when segment 1 ends at 30 ms: segment 1's
        // waits for the link (40 to 43 ms).
        var slow = DataParallelCostModel.Predict(new[] { 10.0, 20.0 }, new[] { 20_000_000L, 2_000_000L }, 4, 8, latencyMicroseconds: 0);
        Assert.AreEqual(43, slow.StepMilliseconds, 1e-9);
        Assert.AreEqual(13, slow.ExposedMilliseconds, 1e-9);
        Assert.AreEqual(0, DataParallelCostModel.AllReduceMilliseconds(1000, 1, 10, 25));
        Assert.AreEqual(2 * 1 * (0.025 + 500 / 1.25e6), DataParallelCostModel.AllReduceMilliseconds(1000, 2, 10, 25), 1e-12);
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void WithoutOpenMpiADistributedRunSaysWhatToInstallInOneLine()
    {
        var r = TestSupport.RunManml(new[] { "train", "--distributed", "mpi", "--epochs", "1", "--train-limit", "64", "--out", TestSupport.NewTempFolder() },
            new Dictionary<string, string> { [MpiLibrary.LibraryVariable] = "/nonexistent/libmpi.so.40" });
        Assert.AreEqual(2, r.ExitCode, r.Stderr + r.Stdout);
        StringAssert.Contains(r.Stderr, "Distributed training needs MPI, and libmpi could not be loaded");
        StringAssert.Contains(r.Stderr, "apt-get install openmpi-bin libopenmpi-dev");
        Assert.AreEqual(1, r.Stderr.Trim().Split('\n').Length, "one line of error:\n" + r.Stderr);
        Assert.IsFalse(r.Stderr.Contains("   at "), r.Stderr);
    }
}
