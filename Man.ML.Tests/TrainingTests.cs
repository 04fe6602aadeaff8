using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

[TestClass]
public sealed class TrainingTests
{
    [TestMethod]
    public void ATinyRunLowersItsTrainingLoss()
    {
        manual_seed(0);
        using var data = TestSupport.SampleImages(0, 64);
        using var net = new CifarResNet(8);
        var plan = SplitPlan.Create(net, 2);
        using var trainer = new LocalTrainer(net, plan, new DglRule(), new MomentumOptions(), new OptimizerSettings { LearningRate = 0.05 }, CPU);
        using var x = Normalization.Cifar.Apply(data.Images.to_type(ScalarType.Float32).DividedBy(255));
        trainer.SetTraining(true);
        var losses = Enumerable.Range(0, 25).Select(_ => trainer.Step(x, data.Labels)).ToList();
        float first = losses[0].Loss, last = losses[^1].Loss;
        Assert.IsTrue(last < 0.7 * first, $"network-head loss went from {first} to {last}");
        Assert.IsTrue(losses[^1].SegmentLosses[0] < losses[0].SegmentLosses[0], "segment 0's local loss did not fall");
    }

    private static TrainingResult TinyRun(LabeledImages train, LabeledImages val, int seed) =>
        new Trainer(new TrainingOptions { Architecture = "resnet8", K = 3, Epochs = 2, BatchSize = 32, Seed = seed })
            .Train(train, val);

    [TestMethod]
    public void TheSameSeedGivesTheSameLossesTwice()
    {
        using var train = TestSupport.SampleImages(0, 96);
        using var val = TestSupport.SampleImages(0, 40);
        var a = TinyRun(train, val, seed: 4);
        var b = TinyRun(train, val, seed: 4);
        var c = TinyRun(train, val, seed: 5);
        for (int e = 0; e < 2; e++)
        {
            Assert.AreEqual(a.Epochs[e].TrainLoss, b.Epochs[e].TrainLoss, 0.0, $"epoch {e + 1}");
            CollectionAssert.AreEqual(a.Epochs[e].SegmentLosses, b.Epochs[e].SegmentLosses);
            Assert.AreEqual(a.Epochs[e].ValAccuracy, b.Epochs[e].ValAccuracy);
        }
        Assert.AreNotEqual(a.Epochs[0].TrainLoss, c.Epochs[0].TrainLoss, "another seed should give other losses");
        Assert.AreEqual(3, a.Epochs[0].SegmentLosses.Length);
        Assert.IsTrue(a.Final.ParametersAuxiliary > 0);
        Assert.AreEqual(a.Network.ParameterCount(), a.Final.ParametersBackbone);
    }

    [TestMethod]
    public void EndToEndNeedsKOfOneAndManNeedsTwoSegments()
    {
        using var train = TestSupport.SampleImages(0, 8);
        var e2e = Assert.ThrowsExactly<InvalidOptionException>(() =>
            new Trainer(new TrainingOptions { Architecture = "resnet8", Rule = LearningRule.EndToEnd, K = 2, Man = null }).Train(train, null));
        StringAssert.Contains(e2e.Message, "K = 1");
        Assert.AreEqual("K", e2e.Option);
        var man = Assert.ThrowsExactly<InvalidOptionException>(() =>
            new Trainer(new TrainingOptions { Architecture = "resnet8", Rule = LearningRule.Dgl, K = 1 }).Train(train, null));
        StringAssert.Contains(man.Message, "MAN");
        var unknown = Assert.ThrowsExactly<InvalidOptionException>(() => LocalLearningRules.Create("forward-forward", new RuleSettings()));
        StringAssert.Contains(unknown.Message, "e2e, dgl, infopro, predsim");
    }

    [TestMethod]
    public void ACheckpointRoundTripsAndRejectsOtherFiles()
    {
        var folder = TestSupport.NewTempFolder();
        try
        {
            using var net = new CifarResNet(14, classes: 10);
            net.eval();
            var path = Path.Combine(folder, "model.ckpt");
            var info = new CheckpointInfo { Architecture = "resnet14", Classes = 10, ImageSize = 32, ClassNames = CifarBinary.DefaultClassNames.ToArray() };
            ModelCheckpoint.Save(path, net, info);
            Assert.AreEqual(1, Directory.GetFiles(folder).Length, "no temporary file is left behind");
            var (loaded, loadedInfo) = ModelCheckpoint.Load(path);
            loaded.eval();
            Assert.AreEqual("resnet14", loadedInfo.Architecture);
            using var x = randn(3, 3, 32, 32);
            using (no_grad())
                Assert.IsTrue(net.call(x).allclose(loaded.call(x), rtol: 0, atol: 0));

            var notOurs = Path.Combine(folder, "other.ckpt");
            File.WriteAllText(notOurs, "hello");
            StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => ModelCheckpoint.Load(notOurs)).Message, "not a Man.ML checkpoint");
            var truncated = Path.Combine(folder, "cut.ckpt");
            File.WriteAllBytes(truncated, File.ReadAllBytes(path)[..40]);
            Assert.ThrowsExactly<InvalidDataException>(() => ModelCheckpoint.Load(truncated));
        }
        finally { Directory.Delete(folder, true); }
    }
}
