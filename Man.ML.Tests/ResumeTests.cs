using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

[TestClass]
public sealed class ResumeTests
{
    private static TrainingOptions Tiny(int k = 2) => new() { Architecture = "resnet8", K = k, Epochs = 3, BatchSize = 32, Seed = 3 };

    private static byte[] Weights(UnitChainNetwork network)
    {
        using var memory = new MemoryStream();
        using (var writer = new BinaryWriter(memory, System.Text.Encoding.UTF8, leaveOpen: true)) network.save(writer);
        return memory.ToArray();
    }

    [TestMethod]
    public void ResumingAtEveryEpochBoundaryGivesTheUninterruptedRunBitForBit()
    {
        var dir = TestSupport.NewTempFolder();
        try
        {
            using var train = TestSupport.SampleImages(0, 96);
            using var val = TestSupport.SampleImages(5000, 40);
            var full = new Trainer(Tiny()) { CheckpointPath = Path.Combine(dir, "run.ckpt"), CheckpointEvery = 1 };
            full.CheckpointWritten += (path, epochs) => File.Copy(path, Path.Combine(dir, $"after-{epochs}.ckpt"));
            var reference = full.Train(train, val);
            var expected = Weights(reference.Network);
            for (int boundary = 1; boundary < 3; boundary++)
            {
                var resumed = new Trainer(Tiny()) { ResumeFrom = Path.Combine(dir, $"after-{boundary}.ckpt"),
                    CheckpointPath = Path.Combine(dir, $"resumed-{boundary}.ckpt") }
                    .Train(train, val);
                CollectionAssert.AreEqual(expected, Weights(resumed.Network), $"resumed after epoch {boundary}");
                Assert.AreEqual(3, resumed.Epochs.Count);
                for (int e = 0; e < 3; e++)
                {
                    Assert.AreEqual(reference.Epochs[e].TrainLoss, resumed.Epochs[e].TrainLoss, 0.0, $"epoch {e + 1} after resuming at {boundary}");
                    Assert.AreEqual(reference.Epochs[e].ValAccuracy, resumed.Epochs[e].ValAccuracy);
                }
            }
        }
        finally { Directory.Delete(dir, true); }
    }

    [TestMethod]
    public void BadCheckpointsAreClearErrors()
    {
        var dir = TestSupport.NewTempFolder();
        try
        {
            using var train = TestSupport.SampleImages(0, 64);
            var path = Path.Combine(dir, "run.ckpt");
            new Trainer(Tiny() with { Epochs = 1 }) { CheckpointPath = path }.Train(train, null);
            Assert.AreEqual(1, TrainingCheckpoint.ReadHeader(path).EpochsCompleted);

            var other = Assert.ThrowsExactly<InvalidOptionException>(() =>
                new Trainer(Tiny(k: 3) with { Epochs = 1 }) { ResumeFrom = path }.Train(train, null));
            StringAssert.Contains(other.Message, "other options: k was 2 there and is 3 here");
            Assert.AreEqual("k", other.Option);

            var bytes = File.ReadAllBytes(path);
            var truncated = Path.Combine(dir, "cut.ckpt");
            File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
            StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(
                () => new Trainer(Tiny() with { Epochs = 1 }) { ResumeFrom = truncated }.Train(train, null)).Message,
                "truncated");

            var newer = Path.Combine(dir, "newer.ckpt");
            var patched = (byte[])bytes.Clone();
            BitConverter.GetBytes(99).CopyTo(patched, "MANML-RUN\n".Length);
            File.WriteAllBytes(newer, patched);
            StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => TrainingCheckpoint.ReadHeader(newer)).Message, "format version 99");

            var foreign = Path.Combine(dir, "foreign.ckpt");
            File.WriteAllText(foreign, "not a checkpoint at all");
            StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => TrainingCheckpoint.ReadHeader(foreign)).Message,
                "not a Man.ML run checkpoint");
        }
        finally { Directory.Delete(dir, true); }
    }

    [TestMethod]
    public void ANonFiniteLossStopsTrainingOrSkipsTheStep()
    {
        using var net = new CifarResNet(8);
        using var trainer = new LocalTrainer(net, SplitPlan.Create(net, 2), new DglRule(), new MomentumOptions(), new OptimizerSettings(), CPU);
        trainer.SetTraining(true);
        using var bad = HeldScalars.Full(new long[] { 4, 3, 32, 32 }, double.NaN);
        using var labels = tensor(new long[] { 0, 1, 2, 3 });
        var e = Assert.ThrowsExactly<NonFiniteException>(() => trainer.Step(bad, labels));
        Assert.AreEqual(0, e.Segment);
        var before = Weights(net);
        var skipped = trainer.Step(bad, labels, NonFinitePolicy.SkipStep);
        Assert.IsTrue(skipped.Skipped);
        CollectionAssert.AreEqual(before, Weights(net), "a skipped step must not change the weights");

        // Through the trainer: an absurd learning rate blows the weights up; the message names segment, step and checkpoint.
        using var train = TestSupport.SampleImages(0, 64);
        var stop = Assert.ThrowsExactly<NonFiniteTrainingException>(() =>
            new Trainer(Tiny() with { LearningRate = 1e30, Epochs = 2 }).Train(train, null));
        StringAssert.Contains(stop.Message, "of segment");
        StringAssert.Contains(stop.Message, "step");
        StringAssert.Contains(stop.Message, "no checkpoint");
    }

    [TestMethod]
    public void ANonFiniteGradientNamesItsSegmentAndSkippedStepsAreCounted()
    {
        // Finite losses, then one NaN put into a gradient of segment 1 (or of its MAN copy, or of segment 0): the one-read
        // check sees it, the slow path names the segment.
        manual_seed(3);
        using var net = new CifarResNet(8);
        var plan = SplitPlan.Create(net, 2);
        using var trainer = new LocalTrainer(net, plan, new DglRule(), new MomentumOptions(), new OptimizerSettings(), CPU);
        trainer.SetTraining(true);
        using var x = randn(4, 3, 32, 32);
        using var labels = tensor(new long[] { 0, 1, 2, 3 });
        var targets = new LocalTargets(labels, x);
        foreach (var (victim, segment) in new[]
                 {
                     (net.Units[plan.Segments[1].Start].parameters().First(), 1), (net.Head.parameters().Last(), 1),
                     (trainer.Man![0].Learnable!.parameters().First(), 0), (trainer.Heads[0].parameters().First(), 0),
                 })
        {
            trainer.Optimizer.zero_grad();
            using (var h = trainer.TrainSegment(0, x, targets).Output) trainer.TrainSegment(1, h!, targets);
            trainer.CheckGradients(); // all finite: no exception
            using (no_grad()) victim.grad!.view(-1)[0].Filled(double.NaN);
            var e = Assert.ThrowsExactly<NonFiniteException>(trainer.CheckGradients);
            Assert.AreEqual("A gradient", e.What);
            Assert.AreEqual(segment, e.Segment);
        }

        // Skipped steps reach the epoch and final figures (and so metrics.json).
        using var train = TestSupport.SampleImages(0, 64);
        var skipping = new Trainer(Tiny() with { LearningRate = 1e30, Epochs = 2 }) { OnNonFinite = NonFinitePolicy.SkipStep };
        var result = skipping.Train(train, null);
        using var _ = result.Network;
        Assert.IsTrue(result.Final.SkippedSteps > 0, "an absurd learning rate must make steps non-finite");
        Assert.AreEqual(skipping.SkippedSteps, result.Final.SkippedSteps);
        Assert.AreEqual(result.Final.SkippedSteps, result.Epochs.Sum(ep => ep.SkippedSteps));
    }
}
