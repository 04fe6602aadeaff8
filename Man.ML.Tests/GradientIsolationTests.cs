using Man.ML.Local;
using Man.ML.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class GradientIsolationTests
{
    private static bool HasGradient(nn.Module module) =>
        module.parameters().Any(p => p.grad is { } g && g.abs().sum().item<float>() > 0);

    private static bool HasNoGradient(nn.Module module) =>
        module.parameters().All(p => p.grad is null || p.grad.abs().sum().item<float>() == 0);

    [TestMethod]
    public void ASegmentsLossReachesOnlyThatSegmentItsCopiesAndItsHead()
    {
        manual_seed(7);
        using var net = new CifarResNet(14);  // 7 units
        var plan = SplitPlan.Create(net, 4);
        using var trainer = new LocalTrainer(net, plan, new DglRule(), new MomentumOptions(), new OptimizerSettings(), CPU);
        trainer.SetTraining(true);
        using var images = randn(6, 3, 32, 32);
        using var labels = tensor(new long[] { 0, 1, 2, 3, 4, 5 });
        var targets = new LocalTargets(labels, images);

        // Forward segments 0 and 1 to get segment 2's input, then clear every gradient.
        var x0 = trainer.TrainSegment(0, images, targets).Output!;
        var x1 = trainer.TrainSegment(1, x0, targets).Output!;
        Assert.IsFalse(x1.requires_grad, "the hand-over to the next segment must be detached");
        trainer.Optimizer.zero_grad();
        foreach (var p in net.parameters()) p.grad?.zero_();

        const int j = 2;
        var output = trainer.TrainSegment(j, x1, targets).Output!;
        Assert.IsFalse(output.requires_grad);
        for (int u = 0; u < net.Units.Count; u++)
        {
            bool inSegment = u >= plan.Segments[j].Start && u < plan.Segments[j].End;
            Assert.AreEqual(inSegment, HasGradient(net.Units[u]), $"unit {net.UnitInfos[u].Name}");
            if (!inSegment) Assert.IsTrue(HasNoGradient(net.Units[u]));
        }
        Assert.IsTrue(HasNoGradient(net.Head));
        for (int h = 0; h < trainer.Heads.Count; h++)
        {
            Assert.AreEqual(h == j, HasGradient(trainer.Heads[h]), $"head {h}");
            Assert.AreEqual(h == j, HasGradient(trainer.Man![h].Learnable!), $"LB {h}");
            Assert.IsTrue(trainer.Man![h].Ema!.parameters().All(p => p.grad is null), $"EMA {h}");
        }
    }

    [TestMethod]
    public void TheLastSegmentIsTrainedByTheNetworksHead()
    {
        using var net = new CifarResNet(8);
        var plan = SplitPlan.Create(net, 2);
        using var trainer = new LocalTrainer(net, plan, new DglRule(), null, new OptimizerSettings(), CPU);
        trainer.SetTraining(true);
        using var images = randn(4, 3, 32, 32);
        using var labels = tensor(new long[] { 1, 2, 3, 4 });
        var x = trainer.TrainSegment(0, images, new LocalTargets(labels, images)).Output!;
        trainer.Optimizer.zero_grad();
        var last = trainer.TrainSegment(1, x, new LocalTargets(labels, images));
        Assert.IsNull(last.Output);
        Assert.IsTrue(HasGradient(net.Head));
        Assert.IsTrue(HasNoGradient(net.Units[0]));
        Assert.IsTrue(HasNoGradient(trainer.Heads[0]));
    }
}
