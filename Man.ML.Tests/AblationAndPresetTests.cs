using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

[TestClass]
public sealed class AblationAndPresetTests
{
    private static (Tensor X, Tensor Y) Batch(int n, int size = 32)
    {
        manual_seed(11);
        return (randn(n, 3, size, size), randint(0, 10, n));
    }

    [TestMethod]
    public void EmaOnlyHasNoTrainableCopyAndLbOnlyNoEmaCopy()
    {
        using var net = new CifarResNet(8);
        var plan = SplitPlan.Create(net, 3);
        using var emaOnly = new LocalTrainer(net, plan, new DglRule(), new MomentumOptions { Ablation = ManAblation.EmaOnly }, new OptimizerSettings(), CPU);
        Assert.IsTrue(Enumerable.Range(0, 2).All(j => emaOnly.Man![j].Learnable is null && emaOnly.Man![j].Ema is not null));
        Assert.AreEqual(0, emaOnly.Man!.TrainableParameters().Count());
        using var net2 = new CifarResNet(8);
        using var lbOnly = new LocalTrainer(net2, plan, new DglRule(), new MomentumOptions { Ablation = ManAblation.LbOnly }, new OptimizerSettings(), CPU);
        Assert.IsTrue(Enumerable.Range(0, 2).All(j => lbOnly.Man![j].Ema is null && lbOnly.Man![j].Learnable is not null));
    }

    [TestMethod]
    public void ParameterCopyHoldsTheNextUnitsWeightsAtEveryStep()
    {
        using var net = new CifarResNet(8);
        var plan = SplitPlan.Create(net, 2);
        using var trainer = new LocalTrainer(net, plan, new DglRule(), new MomentumOptions { Ablation = ManAblation.ParameterCopy },
            new OptimizerSettings { LearningRate = 0.5 }, CPU);
        Assert.IsNull(trainer.Man![0].Learnable, "Table 5's parameter row has no learnable copy");
        trainer.SetTraining(true);
        var (x, y) = Batch(8);
        var next = net.Units[plan.NextUnit(0)];
        for (int step = 0; step < 3; step++)
        {
            var before = next.parameters().Select(p => p.detach().clone()).ToList();
            trainer.Step(x, y);
            // The copy used in this step's forward is next(j) as it was when the step began ...
            Assert.IsTrue(trainer.Man[0].Ema!.parameters().Zip(before).All(p => p.First.allclose(p.Second, rtol: 0, atol: 0)), $"step {step}");
            Assert.IsFalse(next.parameters().Zip(before).All(p => p.First.allclose(p.Second)), "next(j) should have moved");
            // ... and the next forward takes next(j)'s weights after the step.
            trainer.Man.BeforeForward(0);
            Assert.IsTrue(trainer.Man[0].Ema!.parameters().Zip(next.parameters()).All(p => p.First.allclose(p.Second, rtol: 0, atol: 0)));
        }
    }

    [TestMethod]
    public void TheLearnableMixIsSLbPlusTwoMinusSEmaAndIsTrained()
    {
        using var net = new CifarResNet(8);
        var plan = SplitPlan.Create(net, 2);
        using var trainer = new LocalTrainer(net, plan, new DglRule(),
            new MomentumOptions { Mix = ManMix.Learnable }, new OptimizerSettings { LearningRate = 0.5 }, CPU);
        var branch = trainer.Man![0];
        Assert.AreEqual(1f, branch.Mix!.item<float>());
        Assert.IsTrue(trainer.Optimizer.parameters().Any(p => p.Handle == branch.Mix.Handle));
        branch.eval();
        using (no_grad())
        {
            using (no_grad()) branch.Mix.Filled(0.3);
            using var h = randn(2, 16, 32, 32);
            using var expected = branch.Learnable!.call(h).Times(0.3).PlusInPlace(branch.Ema!.call(h).Times(1.7));
            using var actual = branch.call(h);
            Assert.IsTrue(actual.allclose(expected, rtol: 1e-5, atol: 1e-5));
            branch.Mix.Filled(1);
        }
        trainer.SetTraining(true);
        var (x, y) = Batch(8);
        trainer.Step(x, y);
        Assert.AreNotEqual(1f, branch.Mix.item<float>(), "s did not move");
        Assert.ThrowsExactly<InvalidOptionException>(() => new MomentumAuxiliaryNetwork(net, plan,
            new MomentumOptions { Mix = ManMix.Learnable, Ablation = ManAblation.EmaOnly }));
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void AShortRunOfEachRuleWithManLowersItsLoss()
    {
        foreach (var rule in new ILocalLearningRule[]
                 {
                     new DglRule(), new DglRule(DglHeadKind.ManPlusPlus), new InfoProRule(new InfoProSettings()),
                     new InfoProRule(new InfoProSettings { LossMode = InfoProLossMode.Contrastive, Classifier = AuxClassifierConfig.C1F2 }),
                     new PredSimRule(),
                 })
        {
            manual_seed(0);
            using var data = CifarBinary.Read(new[] { TestSupport.BundledSample });
            using var batch = data.Slice(0, 64);
            using var x = Normalization.Cifar.Apply(batch.Images.to_type(ScalarType.Float32).DividedBy(255));
            using var net = new CifarResNet(8);
            // K = 2: MAN's λ schedule (stage of the copied unit over K − 2) is only defined at K = 2 or at the paper's larger K.
            using var trainer = new LocalTrainer(net, SplitPlan.Create(net, 2), rule, new MomentumOptions(),
                new OptimizerSettings { LearningRate = 0.05 }, CPU);
            trainer.SetTraining(true);
            var results = Enumerable.Range(0, 20).Select(_ => trainer.Step(x, batch.Labels)).ToList();
            string name = $"{rule.Name} ({(rule is DglRule d ? d.Head.ToString()
                : rule is InfoProRule i ? i.Settings.LossMode?.ToString() ?? "default" : "")})";
            Assert.IsTrue(results.All(r => r.SegmentLosses.All(float.IsFinite)), $"{name}: non-finite loss");
            Assert.IsTrue(results[^1].SegmentLosses[0] < results[0].SegmentLosses[0],
                $"{name}: segment 0's local loss {results[0].SegmentLosses[0]} -> {results[^1].SegmentLosses[0]}");
            Assert.IsTrue(results[^1].Loss < results[0].Loss, $"{name}: head loss {results[0].Loss} -> {results[^1].Loss}");
        }
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void EveryPresetBuildsItsModelAndTrainsOneStep()
    {
        Assert.AreEqual(3 * 4 * 3 * 2 + 6, ExperimentPresets.All.Count);
        foreach (var preset in ExperimentPresets.All)
        {
            var options = preset.Options;
            var dataset = options.Dataset;
            var trainer = new Trainer(options);
            using (var local = trainer.CreateLocalTrainer(dataset.Classes, dataset.ImageSize))
            using (local.Network)
            {
                Assert.AreEqual(options.K, local.Split.K, preset.Name);
                local.SetTraining(true);
                var (x, y) = Batch(2, dataset.ImageSize);
                var result = local.Step(x, y);
                Assert.IsTrue(result.SegmentLosses.All(float.IsFinite), preset.Name);
            }
        }
        var table = ExperimentPresets.Get("svhn-resnet110-k55-infopro-man").Options;
        Assert.AreEqual((400, 1024, 0.8), (table.Epochs, table.BatchSize, table.LearningRate!.Value));
        var stl = ExperimentPresets.Get("stl10-resnet32-k8-dgl").Options;
        Assert.AreEqual((128, 0.1), (stl.BatchSize, stl.LearningRate!.Value));
        Assert.AreEqual(ManAblation.ParameterCopy, ExperimentPresets.Get("table5a-parameter").Options.Man!.Ablation);
        Assert.ThrowsExactly<InvalidOptionException>(() => ExperimentPresets.Get("cifar100-resnet32"));
    }
}
