using Man.ML.Local;
using Man.ML.Models;
using TorchSharp;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

[TestClass]
public sealed class MomentumTests
{
    private static LocalTrainer NewTrainer(UnitChainNetwork net, int k, MomentumOptions? man, double lr = 0.1) =>
        new(net, SplitPlan.Create(net, k), new DglRule(), man, new OptimizerSettings { LearningRate = lr }, CPU);

    private static void AssertCopiesMatchNext(UnitChainNetwork net, int k)
    {
        var plan = SplitPlan.Create(net, k);
        using var man = new MomentumAuxiliaryNetwork(net, plan, new MomentumOptions());
        for (int j = 0; j < k - 1; j++)
        {
            int next = plan.NextUnit(j);
            var expected = net.Units[next].parameters().Select(p => p.shape).ToList();
            foreach (var copy in new[] { man[j].Learnable!, man[j].Ema! })
            {
                var shapes = copy.parameters().Select(p => p.shape).ToList();
                Assert.AreEqual(expected.Count, shapes.Count, $"boundary {j}: parameter tensors of the copy of {net.UnitInfos[next].Name}");
                for (int i = 0; i < shapes.Count; i++) CollectionAssert.AreEqual(expected[i], shapes[i]);
            }
            // The copies map segment j's output to next(j)'s output shape (stride-2 projection units included).
            var input = net.UnitInfos[plan.Segments[j].End - 1].Output;
            using var x = randn(2, input.Channels, input.Height, input.Width);
            using var y = man[j].call(x);
            var output = net.UnitInfos[next].Output;
            CollectionAssert.AreEqual(new long[] { 2, output.Channels, output.Height, output.Width }, y.shape);
        }
    }

    [TestMethod]
    public void CopiesHaveTheNextUnitsShapeAtEveryBoundaryOfResNet32K16() => AssertCopiesMatchNext(CifarResNet.ResNet32(), 16);

    [TestMethod]
    public void CopiesHaveTheNextUnitsShapeAtEveryBoundaryOfResNet110K55() => AssertCopiesMatchNext(CifarResNet.ResNet110(), 55);

    [TestMethod]
    public void EmaParametersTakeNoGradientAndAreNotOptimized()
    {
        using var net = new CifarResNet(8);
        using var trainer = NewTrainer(net, 4, new MomentumOptions());
        var emaParams = Enumerable.Range(0, 3).SelectMany(j => trainer.Man![j].Ema!.parameters()).ToList();
        Assert.IsTrue(emaParams.Count > 0);
        Assert.IsTrue(emaParams.All(p => !p.requires_grad));
        var optimized = trainer.Optimizer.parameters().Select(p => p.Handle).ToHashSet();
        Assert.IsFalse(emaParams.Any(p => optimized.Contains(p.Handle)), "an EMA parameter is in the optimizer");
        // LB copies are trained.
        var lbParams = Enumerable.Range(0, 3).SelectMany(j => trainer.Man![j].Learnable!.parameters()).ToList();
        Assert.IsTrue(lbParams.All(p => optimized.Contains(p.Handle)));
        // So are the backbone and every auxiliary head, and nothing else.
        var heads = trainer.Heads.SelectMany(h => h.parameters()).ToList();
        Assert.IsTrue(heads.Count > 0 && heads.All(p => optimized.Contains(p.Handle)), "an auxiliary head is not optimized");
        Assert.IsTrue(net.parameters().All(p => optimized.Contains(p.Handle)));
        Assert.AreEqual(net.parameters().Count() + heads.Count + lbParams.Count, optimized.Count);

        using var x = randn(8, 3, 32, 32);
        using var y = tensor(new long[] { 0, 1, 2, 3, 4, 5, 6, 7 });
        trainer.Optimizer.zero_grad();
        trainer.SetTraining(true);
        var r = trainer.TrainSegment(0, x, new LocalTargets(y, x));
        r.Output!.Dispose();
        Assert.IsTrue(emaParams.All(p => p.grad is null));
    }

    [TestMethod]
    public void OneUpdateGivesMTimesOldPlusOneMinusMTimesNext()
    {
        using var net = new CifarResNet(8);
        var plan = SplitPlan.Create(net, 4);
        const double m = 0.9;
        using var man = new MomentumAuxiliaryNetwork(net, plan, new MomentumOptions { EmaDecay = m });
        int next = plan.NextUnit(1);
        var old = man[1].Ema!.parameters().Select(p => p.data<float>().ToArray()).ToList();
        var source = net.Units[next].parameters().Select(p => p.data<float>().ToArray()).ToList();
        man.AfterLocalBackward(1);
        var updated = man[1].Ema!.parameters().Select(p => p.data<float>().ToArray()).ToList();
        for (int t = 0; t < old.Count; t++)
            for (int i = 0; i < old[t].Length; i++)
                Assert.AreEqual(m * old[t][i] + (1 - m) * source[t][i], updated[t][i], 1e-6);
        // Other boundaries are untouched by segment 1's update.
        Assert.IsTrue(man[0].Ema!.parameters().Zip(net.Units[plan.NextUnit(0)].parameters()).Any(p => !p.First.allclose(p.Second)));
    }

    [TestMethod]
    public void TheStepUpdatesEmaFromTheNextUnitBeforeTheOptimizerStep()
    {
        manual_seed(1);
        using var net = new CifarResNet(8);
        const double m = 0.5;
        using var trainer = NewTrainer(net, 2, new MomentumOptions { EmaDecay = m }, lr: 0.5);
        trainer.SetTraining(true);
        int next = trainer.Split.NextUnit(0);
        var emaBefore = trainer.Man![0].Ema!.parameters().Select(p => p.detach().clone()).ToList();
        var nextBefore = net.Units[next].parameters().Select(p => p.detach().clone()).ToList();
        using var x = randn(8, 3, 32, 32);
        using var y = tensor(new long[] { 0, 1, 2, 3, 4, 5, 6, 7 });
        trainer.Step(x, y);
        var emaAfter = trainer.Man[0].Ema!.parameters().ToList();
        var nextAfter = net.Units[next].parameters().ToList();
        Assert.IsTrue(nextAfter.Zip(nextBefore).Any(p => !p.First.allclose(p.Second)), "the optimizer did not move next(j)");
        for (int t = 0; t < emaAfter.Count; t++)
        {
            using var expected = emaBefore[t].Times(m).PlusInPlace(nextBefore[t].Times(1 - m));
            Assert.IsTrue(emaAfter[t].allclose(expected, rtol: 0, atol: 1e-6), $"EMA tensor {t} does not follow next(j) as it was before the step");
        }
    }

    [TestMethod]
    public void AblationsKeepTheRightBranches()
    {
        using var net = new CifarResNet(8);
        var plan = SplitPlan.Create(net, 2);
        using var emaOnly = new MomentumAuxiliaryNetwork(net, plan, new MomentumOptions { Ablation = ManAblation.EmaOnly });
        Assert.IsNull(emaOnly[0].Learnable);
        Assert.IsNotNull(emaOnly[0].Ema);
        using var lbOnly = new MomentumAuxiliaryNetwork(net, plan, new MomentumOptions { Ablation = ManAblation.LbOnly });
        Assert.IsNotNull(lbOnly[0].Learnable);
        Assert.IsNull(lbOnly[0].Ema);

        // Parameter copy: EMA holds next(j)'s live parameters at every forward.
        using var copy = new MomentumAuxiliaryNetwork(net, plan, new MomentumOptions { Ablation = ManAblation.ParameterCopy });
        var nextUnit = net.Units[plan.NextUnit(0)];
        using var quarter = 0.25.ToScalar();
        using (no_grad()) foreach (var p in nextUnit.parameters()) p.add_(quarter, HeldScalars.One);
        copy.BeforeForward(0);
        Assert.IsTrue(copy[0].Ema!.parameters().Zip(nextUnit.parameters()).All(p => p.First.allclose(p.Second, rtol: 0, atol: 0)));

        // Initialisation from next(j) versus random.
        using var fromNext = new MomentumAuxiliaryNetwork(net, plan, new MomentumOptions { Initialization = ManInitialization.Next });
        Assert.IsTrue(fromNext[0].Learnable!.parameters().Zip(nextUnit.parameters()).All(p => p.First.allclose(p.Second, rtol: 0, atol: 0)));
        using var random = new MomentumAuxiliaryNetwork(net, plan, new MomentumOptions());
        Assert.IsFalse(random[0].Learnable!.parameters().Zip(nextUnit.parameters()).All(p => p.First.allclose(p.Second, rtol: 0, atol: 0)));
    }
}
