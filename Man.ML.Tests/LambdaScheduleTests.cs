using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Models;

namespace Man.ML.Tests;

[TestClass]
public sealed class LambdaScheduleTests
{
    private static (double, double) ManWeights(CifarResNet net, int k, int segment)
    {
        var plan = SplitPlan.Create(net, k);
        var context = new HeadContext(net, plan, segment, net.UnitInfos[plan.NextUnit(segment)].Output, plan.NextUnit(segment), Normalization.Cifar);
        return InfoProRule.Weights(context, InfoProRule.ManLambdas, LambdaSchedule.CopiedUnitStage);
    }

    private static void AssertStageWeights(CifarResNet net, int k, params (double L1, double L2)[] byStage)
    {
        var plan = SplitPlan.Create(net, k);
        for (int j = 0; j < k - 1; j++)
        {
            int stage = net.UnitInfos[plan.NextUnit(j)].Stage;
            var (l1, l2) = ManWeights(net, k, j);
            Assert.AreEqual(byStage[stage - 1].L1, l1, 5e-4, $"K={k} segment {j} (copy in stage {stage}) λ1");
            Assert.AreEqual(byStage[stage - 1].L2, l2, 5e-4, $"K={k} segment {j} (copy in stage {stage}) λ2");
        }
    }

    [TestMethod]
    public void ManScheduleReproducesTheReferenceTable()
    {
        // docs/REFERENCE.md §3.6, with λ = (5, 0.5 → 0, 0).
        using var r32 = CifarResNet.ResNet32();
        AssertStageWeights(r32, 16, (4.643, 0.464), (4.286, 0.429), (3.929, 0.393));
        AssertStageWeights(r32, 8, (4.167, 0.417), (3.333, 0.333), (2.5, 0.25));
        AssertStageWeights(r32, 2, (5, 0.5), (5, 0.5), (5, 0.5));
        using var r110 = CifarResNet.ResNet110();
        AssertStageWeights(r110, 32, (4.833, 0.483), (4.667, 0.467), (4.5, 0.45));
        AssertStageWeights(r110, 55, (4.906, 0.491), (4.811, 0.481), (4.717, 0.472));
    }

    [TestMethod]
    public void ASchedulePastZeroIsAClearError()
    {
        // ResNet-32 K=4: the copy in stage 3 gets ratio 1.5 -> (−2.5, −0.25); stage 2 gets (0, 0), a segment that cannot learn.
        using var r32 = CifarResNet.ResNet32();
        var negative = Assert.ThrowsExactly<InvalidOptionException>(() => ManWeights(r32, 4, 2));
        StringAssert.Contains(negative.Message, "negative");
        var zero = Assert.ThrowsExactly<InvalidOptionException>(() => ManWeights(r32, 4, 1));
        StringAssert.Contains(zero.Message, "zero");
        Assert.AreEqual((2.5, 0.25), ManWeights(r32, 4, 0));
    }

    [TestMethod]
    public void InfoProScheduleInterpolatesOverTheModuleIndex()
    {
        // docs/REFERENCE.md §2.1: CIFAR-10 ResNet-32 K=16 λ = (5, 0.05, 0.2, 0.5); ratio m/(K−2).
        Assert.IsTrue(InfoProLambdaTable.TryGet("cifar10", 32, 16, out var lambdas));
        Assert.AreEqual(new InfoProLambdas(5, 0.05, 0.2, 0.5), lambdas);
        using var r32 = CifarResNet.ResNet32();
        var plan = SplitPlan.Create(r32, 16);
        (double, double) At(int m) => InfoProRule.Weights(new HeadContext(r32, plan, m, r32.UnitInfos[m].Output, null, Normalization.Cifar),
            lambdas, LambdaSchedule.ModuleIndex);
        Assert.AreEqual((5.0, 0.05), At(0));
        var (l1, l2) = At(7);
        Assert.AreEqual(2.6, l1, 1e-12);
        Assert.AreEqual(0.275, l2, 1e-12);
        (l1, l2) = At(14);
        Assert.AreEqual(0.2, l1, 1e-12);
        Assert.AreEqual(0.5, l2, 1e-12);
        // Other entries of the table, number for number.
        Assert.IsTrue(InfoProLambdaTable.TryGet("cifar10", 110, 4, out var r110k4));
        Assert.AreEqual(new InfoProLambdas(1, 0, 0, 1), r110k4);
        Assert.IsTrue(InfoProLambdaTable.TryGet("stl10", 110, 16, out var stl));
        Assert.AreEqual(new InfoProLambdas(20, 0.5, 10, 0.1), stl);
        Assert.IsTrue(InfoProLambdaTable.TryGet("svhn", 110, 8, out var svhn));
        Assert.AreEqual(new InfoProLambdas(5, 0, 0.5, 2), svhn);
        Assert.IsFalse(InfoProLambdaTable.TryGet("cifar10", 32, 3, out _));
    }

    [TestMethod]
    public void InfoProDefaultsFollowMethodMd()
    {
        using var r32 = CifarResNet.ResNet32();
        var plan = SplitPlan.Create(r32, 16);
        var rule = new InfoProRule(new InfoProSettings());
        var alone = rule.Resolve(new HeadContext(r32, plan, 0, r32.UnitInfos[0].Output, null, Normalization.Cifar));
        Assert.AreEqual((AuxClassifierConfig.C1F2, InfoProLossMode.Contrastive, new InfoProLambdas(5, 0.05, 0.2, 0.5), LambdaSchedule.ModuleIndex), alone);
        var withMan = rule.Resolve(new HeadContext(r32, plan, 0, r32.UnitInfos[1].Output, 1, Normalization.Cifar));
        Assert.AreEqual((AuxClassifierConfig.C2F2, InfoProLossMode.CrossEntropy, new InfoProLambdas(5, 0.5, 0, 0), LambdaSchedule.CopiedUnitStage), withMan);
        using var r20 = new CifarResNet(20);
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => rule.Resolve(
            new HeadContext(r20, SplitPlan.Create(r20, 4), 0, r20.UnitInfos[0].Output, null, Normalization.Cifar)));
        StringAssert.Contains(e.Message, "--lambda");
        Assert.AreEqual(new InfoProLambdas(5, 0.5, 0, 0), InfoProLambdas.Parse("5, 0.5,0,0"));
        Assert.ThrowsExactly<InvalidOptionException>(() => InfoProLambdas.Parse("5,0.5"));
    }
}
