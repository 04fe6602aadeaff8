using Man.ML.Local;
using Man.ML.MLNet;
using Man.ML.Training;
using Microsoft.ML;
using static TorchSharp.torch;

namespace Man.ML.Tests;

/// <summary>Options resolve once into a plan, and the engine is what the plan resolved; nothing on the way touches the application's random stream.</summary>
[TestClass]
public sealed class PlanDrivesEngineTests
{
    private static byte[] GeneratorBytes()
    {
        using var state = get_rng_state();
        return state.data<byte>().ToArray();
    }

    [TestMethod]
    public void ConstructingTheEstimatorBuildsNothingReadsNoFileAndLeavesLibtorchsGeneratorAsItWas()
    {
        var garbage = Path.Combine(Path.GetTempPath(), $"manml-not-weights-{Guid.NewGuid():N}.pt");
        File.WriteAllBytes(garbage, new byte[] { 1, 2, 3, 4 });
        try
        {
            manual_seed(1234);
            using (randn(3)) { } // an application's stream, somewhere along
            var before = GeneratorBytes();
            var options = new ManImageClassificationTrainer.Options { Architecture = "resnet8", K = 2, Seed = 7, InitFrom = garbage };
            var estimator = new MLContext(seed: 1).MulticlassClassification.Trainers.ManImageClassification(options);
            CollectionAssert.AreEqual(before, GeneratorBytes(), "constructing the estimator moved libtorch's global generator");

            // The file is read when the run is resolved, not before: a broken file fails there, and resolving a valid run
            // gives the generator back too.
            Assert.ThrowsExactly<Interop.IncompatibleWeightsException>(() => estimator.ResolvePlan(10));
            CollectionAssert.AreEqual(before, GeneratorBytes(), "a failed resolve moved the generator");
            options.InitFrom = null;
            var plan = estimator.ResolvePlan(10);
            Assert.AreEqual(2, plan.K);
            CollectionAssert.AreEqual(before, GeneratorBytes(), "ResolvePlan moved the generator");
            var trainer = new Trainer(options.ToTrainingOptions());
            _ = trainer.Prepare(10, 32);
            CollectionAssert.AreEqual(before, GeneratorBytes(), "Trainer.Prepare moved the generator");
        }
        finally
        {
            File.Delete(garbage);
        }
    }

    [TestMethod]
    public void TheEstimatorsDefaultsAreTheLibrarysDefaults()
    {
        var options = new ManImageClassificationTrainer.Options();
        Assert.AreEqual(new TrainingOptions(), options.ToTrainingOptions());
        options.UseMan = false;
        options.EmaMomentum = 0.9;
        Assert.IsNull(options.ToTrainingOptions().Man);
        options.UseMan = true; // MAN's settings were kept while it was off
        Assert.AreEqual(new MomentumOptions { EmaDecay = 0.9 }, options.ToTrainingOptions().Man);
        var preset = ExperimentPresets.Get("cifar10-resnet32-k16-infopro-man").Options;
        Assert.AreEqual(preset with { Augmentation = new TrainingOptions().Augmentation, Normalization = new TrainingOptions().Normalization },
            ManImageClassificationTrainer.Options.FromPreset("cifar10-resnet32-k16-infopro-man").ToTrainingOptions());
    }

    [TestMethod]
    public void TheEngineIsBuiltFromThePlansHeadContextsAndTheRunsGenerator()
    {
        var options = new TrainingOptions { Architecture = "resnet8", K = 3, Seed = 11, Man = new MomentumOptions() };
        var trainer = new Trainer(options);
        var plan = trainer.Prepare(10, 32);
        using var local = trainer.CreateLocalTrainer(10, 32);
        Assert.AreEqual(plan.K, local.Split.K);
        Assert.AreEqual(plan.Heads.Count, local.Heads.Count);
        Assert.AreEqual(plan.Device, local.Device.ToString());

        // The same seed gives the same heads and MAN copies whatever the application drew in between: they come from
        // the run's generator, not from wherever the global one happens to be.
        manual_seed(99);
        using (randn(1000)) { }
        var again = new Trainer(options);
        _ = again.Prepare(10, 32);
        using (randn(1000)) { }
        using var other = again.CreateLocalTrainer(10, 32);
        var a = local.AuxiliaryModule.state_dict();
        var b = other.AuxiliaryModule.state_dict();
        Assert.AreEqual(a.Count, b.Count);
        foreach (var (name, tensor) in a)
            Assert.IsTrue(tensor.equal(b[name]).all().item<bool>(), $"{name} differs between two engines of one plan");
        local.Network.Dispose();
        other.Network.Dispose();
    }

    [TestMethod]
    public void TheLinearProbeSeedsItsClassifierAndGivesTheGeneratorBack()
    {
        manual_seed(77);
        var before = GeneratorBytes();
        float[] features = { 0, 0, 1, 1, 0, 1, 1, 0 };
        long[] labels = { 0, 1, 1, 0 };
        double a = Diagnostics.LinearProbe.Accuracy(features, labels, features, labels, 2, steps: 5, seed: 3);
        CollectionAssert.AreEqual(before, GeneratorBytes(), "the linear probe moved libtorch's global generator");
        Assert.AreEqual(a, Diagnostics.LinearProbe.Accuracy(features, labels, features, labels, 2, steps: 5, seed: 3), "same seed, same probe");
    }
}
