using Man.ML.Diagnostics;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class PipelineTests
{
    // ResNet-8 has 4 units; K = 4 puts one in each segment, so W = 2 and W = 3 both have MAN boundaries between stages.
    private static TrainingOptions Tiny(int w, int depth, LearningRule rule = LearningRule.Dgl, MomentumOptions? man = null) => new()
    {
        Architecture = "resnet8", K = 4, Rule = rule, Man = man ?? new MomentumOptions(), Epochs = 2, BatchSize = 16, Seed = 5,
        // InfoPro with MAN gives ResNet-8 segments zero weight at its default λ: weights for every segment.
        RuleSettings = new RuleSettings
        {
            InfoPro = new InfoProSettings { Schedule = LambdaSchedule.ModuleIndex, Lambdas = InfoProLambdas.Parse("5,0.5,5,0.5") },
        },
        PipelineStages = w, PipelineDepth = depth, StageThreads = 1, StageDevices = w > 1 ? Enumerable.Repeat("cpu", w).ToArray() : null,
    };

    private static byte[] Weights(UnitChainNetwork network)
    {
        using var memory = new MemoryStream();
        using (var writer = new BinaryWriter(memory, System.Text.Encoding.UTF8, leaveOpen: true)) network.save(writer);
        return memory.ToArray();
    }

    // Trains at one libtorch thread on the calling thread (the stages use one each): the same kernels in every mode.
    private static (byte[] Weights, TrainingResult Result) Train(TrainingOptions options, Data.LabeledImages train, string? checkpoint = null,
        string? resume = null, Action<Trainer>? setUp = null)
    {
        int threads = get_num_threads();
        set_num_threads(1);
        try
        {
            var trainer = new Trainer(options) { CheckpointPath = checkpoint, ResumeFrom = resume };
            setUp?.Invoke(trainer);
            var result = trainer.Train(train, null);
            using var network = result.Network;
            return (Weights(network), result);
        }
        finally
        {
            set_num_threads(threads);
        }
    }

    public static IEnumerable<object[]> Configurations => new[]
    {
        new object[] { "dgl+man", LearningRule.Dgl, ManAblation.None, 2 },
        new object[] { "dgl+man", LearningRule.Dgl, ManAblation.None, 3 },
        new object[] { "infopro+man", LearningRule.InfoPro, ManAblation.None, 2 },
        new object[] { "dgl+man param-copy", LearningRule.Dgl, ManAblation.ParameterCopy, 2 },
    };

    [TestMethod]
    [DynamicData(nameof(Configurations))]
    public void LockStepPipelineEqualsTheSequentialRunBitForBit(string name, LearningRule rule, ManAblation ablation, int w)
    {
        using var train = TestSupport.SampleImages(0, 72); // 4 full batches and a partial one (8 images) per epoch
        var man = new MomentumOptions { Ablation = ablation };
        var sequential = Train(Tiny(1, 0, rule, man), train);
        var pipelined = Train(Tiny(w, 0, rule, man), train);
        Assert.IsNotNull(pipelined.Result.Plan.Pipeline, name);
        Assert.AreEqual(w, pipelined.Result.Plan.Pipeline!.Stages.Count);
        CollectionAssert.AreEqual(sequential.Weights, pipelined.Weights, $"{name}, W = {w}: lock-step must compute the sequential run");
        for (int e = 0; e < 2; e++)
        {
            Assert.AreEqual(sequential.Result.Epochs[e].TrainLoss, pipelined.Result.Epochs[e].TrainLoss, 0.0, $"{name} epoch {e + 1}");
            CollectionAssert.AreEqual(sequential.Result.Epochs[e].SegmentLosses.ToArray(), pipelined.Result.Epochs[e].SegmentLosses.ToArray());
        }
    }

    [TestMethod]
    public void APipelineWithDepthIsDeterministicAndDiffersFromLockStepOnlyThroughMansBoundaryCopies()
    {
        using var train = TestSupport.SampleImages(0, 72);
        var first = Train(Tiny(2, 2), train);
        var second = Train(Tiny(2, 2), train);
        CollectionAssert.AreEqual(first.Weights, second.Weights, "same seed, W and d: the same weights, run after run");
        var lockStep = Train(Tiny(2, 0), train);
        CollectionAssert.AreNotEqual(lockStep.Weights, first.Weights, "d = 2 lets MAN's boundary EMA follow older parameters");
        // Without MAN nothing crosses a stage boundary upstream: every depth computes the sequential run.
        var noMan = Train(Tiny(2, 2) with { Man = null }, train);
        var sequentialNoMan = Train(Tiny(1, 0) with { Man = null }, train);
        CollectionAssert.AreEqual(sequentialNoMan.Weights, noMan.Weights, "without MAN the depth changes nothing");
    }

    [TestMethod]
    public void AKilledAndResumedPipelinedRunEndsIdenticalToTheUninterruptedOne()
    {
        var dir = TestSupport.NewTempFolder();
        try
        {
            using var train = TestSupport.SampleImages(0, 72);
            var options = Tiny(2, 1) with { Epochs = 3 };
            var full = Train(options, train, Path.Combine(dir, "full.ckpt"));
            // Stopped (cancelled) in the middle of epoch 2, after the checkpoint of epoch 1.
            using var cancel = new CancellationTokenSource();
            var path = Path.Combine(dir, "run.ckpt");
            var interrupted = new Trainer(options) { CheckpointPath = path, CheckpointEvery = 1 };
            interrupted.BatchCompleted += p => { if (p.Epoch == 2 && p.Batch == 2) cancel.Cancel(); };
            int threads = get_num_threads();
            set_num_threads(1);
            try
            {
                Assert.ThrowsExactly<OperationCanceledException>(() => interrupted.Train(train, null, null, cancel.Token));
            }
            finally
            {
                set_num_threads(threads);
            }
            Assert.AreEqual(1, TrainingCheckpoint.ReadHeader(path).EpochsCompleted);
            var resumed = Train(options, train, Path.Combine(dir, "resumed.ckpt"), resume: path);
            CollectionAssert.AreEqual(full.Weights, resumed.Weights, "killed after epoch 1's checkpoint and resumed");
            Assert.AreEqual(full.Result.Epochs[^1].TrainLoss, resumed.Result.Epochs[^1].TrainLoss, 0.0);
        }
        finally { Directory.Delete(dir, true); }
    }

    [TestMethod]
    public void CancellingAPipelinedRunEndsEveryWorkerAndReleasesEveryTensorInFlight()
    {
        using var train = TestSupport.SampleImages(0, 160);
        long liveBefore = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int attempt = 0; attempt < 3; attempt++)
        {
            using var cancel = new CancellationTokenSource();
            var trainer = new Trainer(Tiny(2, 2) with { Epochs = 3 });
            // Cancelled at a different batch each time, with batches, activations and snapshots between the stages.
            trainer.BatchCompleted += p => { if (p.Batch == 2 + attempt) cancel.Cancel(); };
            Assert.ThrowsExactly<OperationCanceledException>(() => trainer.Train(train, null, null, cancel.Token));
            Assert.AreEqual(0, SegmentPipeline.RunningWorkers, "a stage worker is still running after the run was cancelled");
            Assert.AreEqual(0L, SegmentPipeline.LiveMessages, "batches or parameter snapshots were left between the stages");
        }
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long liveAfter = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.IsTrue(liveAfter - liveBefore <= 2, $"live tensors on the calling thread went from {liveBefore} to {liveAfter}");
    }

    [TestMethod]
    public void TheCallingThreadFeedsThePipelineAtOneThreadAndGetsItsBudgetBack()
    {
        // The calling thread makes batches and reads results while the stages compute: at its own budget each small op
        // would wake OpenMP workers that spin on the stages' cores. It runs at one thread for the epoch, then as before.
        using var train = TestSupport.SampleImages(0, 64);
        int threads = get_num_threads();
        try
        {
            set_num_threads(2);
            var seen = new List<int>();
            var trainer = new Trainer(Tiny(2, 1) with { Epochs = 1 });
            trainer.BatchCompleted += _ => seen.Add(get_num_threads());
            using (trainer.Train(train, null).Network) { }
            Assert.AreEqual(4, seen.Count);
            Assert.IsTrue(seen.All(t => t == 1), $"the calling thread ran at {string.Join(", ", seen)} threads during the epoch");
            Assert.AreEqual(2, get_num_threads(), "the calling thread's budget after a pipelined epoch");

            using var cancel = new CancellationTokenSource();
            var cancelled = new Trainer(Tiny(2, 1) with { Epochs = 1 });
            cancelled.BatchCompleted += p => { if (p.Batch == 2) cancel.Cancel(); };
            Assert.ThrowsExactly<OperationCanceledException>(() => cancelled.Train(train, null, null, cancel.Token));
            Assert.AreEqual(2, get_num_threads(), "the calling thread's budget after a cancelled pipelined epoch");
        }
        finally
        {
            set_num_threads(threads);
        }
    }

    [TestMethod]
    public void ANonFiniteStepStopsThePipelineNamingSegmentAndStepOrSkipsIt()
    {
        using var train = TestSupport.SampleImages(0, 64);
        var stop = Assert.ThrowsExactly<NonFiniteTrainingException>(() => new Trainer(Tiny(2, 1) with { LearningRate = 1e30 }).Train(train, null));
        StringAssert.Contains(stop.Message, "of segment");
        StringAssert.Contains(stop.Message, "step");
        Assert.AreEqual(0, SegmentPipeline.RunningWorkers);
        Assert.AreEqual(0L, SegmentPipeline.LiveMessages);

        var skipping = new Trainer(Tiny(2, 1) with { LearningRate = 1e30 }) { OnNonFinite = NonFinitePolicy.SkipStep };
        var result = skipping.Train(train, null);
        using var _ = result.Network;
        Assert.IsTrue(result.Final.SkippedSteps > 0, "an absurd learning rate must make steps non-finite");
        Assert.AreEqual(result.Final.SkippedSteps, result.Epochs.Sum(e => e.SkippedSteps));
        Assert.AreEqual(0L, SegmentPipeline.LiveMessages);
    }

    [TestMethod]
    public void ThePlanStatesTheStagesBalancedByEstimatedCostAndRefusesBadPipelines()
    {
        var plan = new Trainer(new TrainingOptions { PipelineStages = 2, StageDevices = new[] { "cpu", "CPU" } }).Prepare(10, 32);
        var pipeline = plan.Pipeline!;
        Assert.AreEqual(2, pipeline.Stages.Count);
        Assert.AreEqual(0, pipeline.Stages[0].FirstSegment);
        Assert.AreEqual(15, pipeline.Stages[1].LastSegment);
        Assert.AreEqual(pipeline.Stages[0].LastSegment + 1, pipeline.Stages[1].FirstSegment);
        Assert.IsTrue(pipeline.Stages.All(s => s.EstimatedShare is > 0.35 and < 0.65), pipeline.Describe());
        Assert.AreEqual(1.0, pipeline.Stages.Sum(s => s.EstimatedShare), 1e-9);
        StringAssert.Contains(plan.Summary, "pipelined in 2 stages (depth 1)");
        var json = plan.ToJson();
        Assert.AreEqual(1, (int)json["pipeline"]!["depth"]!);
        Assert.AreEqual("cpu", (string)json["pipeline_devices"]![1]!);
        Assert.IsNull(new Trainer(new TrainingOptions()).Prepare(10, 32).Pipeline, "sequential by default");

        var given = new Trainer(new TrainingOptions { PipelineStages = 3, StageEnds = new[] { 3, 9 } }).Prepare(10, 32).Pipeline!;
        Assert.AreEqual("0-3 4-9 10-15", string.Join(" ", given.Stages.Select(s => $"{s.FirstSegment}-{s.LastSegment}")));
        Assert.IsFalse(given.Balanced);

        void Refused(TrainingOptions options, string option, string fragment)
        {
            var e = Assert.ThrowsExactly<InvalidOptionException>(() => new Trainer(options));
            Assert.AreEqual(option, e.Option, e.Message);
            StringAssert.Contains(e.Message, fragment);
        }
        Refused(new TrainingOptions { PipelineStages = 17 }, nameof(TrainingOptions.PipelineStages), "K = 16");
        Refused(new TrainingOptions { PipelineStages = -1 }, nameof(TrainingOptions.PipelineStages), "got -1");
        Refused(new TrainingOptions { PipelineStages = 2, PipelineDepth = 17 }, nameof(TrainingOptions.PipelineDepth), "lock-step");
        Refused(new TrainingOptions { PipelineStages = 2, StageDevices = new[] { "cpu" } }, nameof(TrainingOptions.StageDevices), "one per stage");
        Refused(new TrainingOptions { PipelineStages = 2, StageDevices = new[] { "cpu", "tpu" } }, nameof(TrainingOptions.StageDevices), "tpu");
        Refused(new TrainingOptions { PipelineStages = 3, StageEnds = new[] { 5 } }, nameof(TrainingOptions.StageEnds), "need 2 stage ends");
        Refused(new TrainingOptions { PipelineStages = 3, StageEnds = new[] { 9, 3 } }, nameof(TrainingOptions.StageEnds), "increase");
        Refused(new TrainingOptions { PipelineStages = 2, StageEnds = new[] { 15 } }, nameof(TrainingOptions.StageEnds), "0..14");
        Refused(new TrainingOptions { PipelineStages = 2, StageThreads = 0 }, nameof(TrainingOptions.StageThreads), "got 0");
    }

    [TestMethod]
    public void TheDefaultBoundariesOfResNet32KSixteenAreTheOnesItsMeasuredSegmentTimesBalanceTo()
    {
        // The ends `manml-lab pipeline` balanced measured per-segment times to on both CPU families the project ran on
        // (docs/BENCHMARKS.md, "The default stage boundaries"): DGL + MAN at 5 on AVX-512 (6 on AVX2), InfoPro + MAN at
        // 6 on both. The estimate must reach them without measuring, and on every machine alike.
        foreach (var (rule, expected) in new[] { (LearningRule.Dgl, 5), (LearningRule.InfoPro, 6) })
        {
            var pipeline = new Trainer(new TrainingOptions { Rule = rule, PipelineStages = 2 }).Prepare(10, 32).Pipeline!;
            Assert.AreEqual(expected, pipeline.Stages[0].LastSegment, $"{rule}: {pipeline.Describe()}");
        }
    }

    [TestMethod]
    public void StageBalanceFindsTheBestContiguousGroupingAndTheCostModelAddsItsParts()
    {
        var random = new Random(7);
        for (int trial = 0; trial < 200; trial++)
        {
            int k = random.Next(1, 9), w = random.Next(1, k + 1);
            var costs = Enumerable.Range(0, k).Select(_ => random.NextDouble() * 10).ToArray();
            var ends = StageBalance.Ends(costs, w);
            Assert.AreEqual(w - 1, ends.Length);
            double Slowest(IReadOnlyList<int> e) => StageBalance.Stages(e, k).Max(s => costs.Skip(s.First).Take(s.Last - s.First + 1).Sum());
            // Every grouping, by brute force: no better one exists.
            double best = Groupings(k, w).Min(Slowest);
            Assert.AreEqual(best, Slowest(ends), 1e-9, $"costs {string.Join(",", costs)}, W = {w}");
        }

        // By hand: segments of 3, 1, 1, 3 ms in 2 stages at 0 | 1..3 cost 3 | 5; at 0..1 | 2..3, 4 | 4.
        var p = PipelineCostModel.Predict(new[] { 3.0, 1, 1, 3 }, new long[] { 1_000_000, 1_000_000, 2_500_000, 0 }, new[] { 1 }, linkGigabitsPerSecond: 10);
        Assert.AreEqual(4 + 1_000_000 * 8 / 10e9 * 1000, p.StageMilliseconds[0], 1e-12); // 0.8 ms to send 1 MB at 10 Gbit/s
        Assert.AreEqual(4.0, p.StageMilliseconds[1], 1e-12);
        Assert.AreEqual(4.8, p.StepMilliseconds, 1e-12);
        Assert.AreEqual(8.0, p.SequentialMilliseconds, 1e-12);
        Assert.AreEqual(8.0 * 10 / (4.8 * 11), p.Speedup(10), 1e-12); // one step of filling in 10
        Assert.AreEqual(0.0, PipelineCostModel.Predict(new[] { 3.0, 1, 1, 3 }, new long[] { 1, 1, 1, 0 }, new[] { 1 }, null).SendMilliseconds);
    }

    private static IEnumerable<int[]> Groupings(int k, int w)
    {
        if (w == 1)
        {
            yield return Array.Empty<int>();
            yield break;
        }
        // Choose w − 1 increasing ends in 0..k−2.
        foreach (var rest in Choose(Enumerable.Range(0, k - 1).ToArray(), w - 1)) yield return rest;
    }

    private static IEnumerable<int[]> Choose(int[] items, int n)
    {
        if (n == 0)
        {
            yield return Array.Empty<int>();
            yield break;
        }
        for (int i = 0; i <= items.Length - n; i++)
            foreach (var tail in Choose(items[(i + 1)..], n - 1))
                yield return tail.Prepend(items[i]).ToArray();
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void TheCommandLineTrainsAPipelineAndSaysWhatItRefuses()
    {
        var dir = TestSupport.NewTempFolder();
        try
        {
            var run = TestSupport.RunManml(new[]
            {
                "train", "--arch", "resnet8", "--k", "4", "--epochs", "1", "--train-limit", "64", "--val-split", "32", "--batch-size", "16",
                "--pipeline", "2", "--pipeline-depth", "1", "--stage-devices", "cpu,cpu", "--stage-threads", "1", "--out", Path.Combine(dir, "run"),
            });
            Assert.AreEqual(0, run.ExitCode, (run.Stdout + run.Stderr));
            StringAssert.Contains((run.Stdout + run.Stderr), "pipeline: 2 stages: segments");
            var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "run", "metrics.json")))!["config"]!;
            Assert.AreEqual(1, (int)config["pipeline"]!["depth"]!);

            foreach (var (args, fragment) in new[]
                     {
                         (new[] { "--pipeline", "two" }, "--pipeline must be a number of stages"),
                         (new[] { "--pipeline", "2", "--stage-ends", "a" }, "--stage-ends must be segment indices"),
                         (new[] { "--pipeline", "2", "--stage-devices", "cpu" }, "one per stage"),
                     })
            {
                var bad = TestSupport.RunManml(new[] { "train", "--arch", "resnet8", "--k", "4", "--epochs", "1", "--train-limit", "64",
                    "--out", Path.Combine(dir, "bad") }.Concat(args));
                Assert.AreEqual(2, bad.ExitCode, (bad.Stdout + bad.Stderr));
                StringAssert.Contains((bad.Stdout + bad.Stderr), fragment);
                Assert.IsFalse((bad.Stdout + bad.Stderr).Contains("   at "), "a user mistake must not print a stack trace: " + bad.Stderr);
            }
        }
        finally { Directory.Delete(dir, true); }
    }
}
