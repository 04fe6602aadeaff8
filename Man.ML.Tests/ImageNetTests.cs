using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class ImageNetTests
{
    // torchvision's published parameter counts (1000 classes; the VGG count at 224×224).
    [TestMethod]
    [DataRow("resnet34", 21_797_672L)]
    [DataRow("resnet101", 44_549_160L)]
    [DataRow("resnet152", 60_192_808L)]
    [DataRow("resnext101_32x8d", 88_791_336L)]
    [DataRow("vgg13_bn", 133_053_736L)]
    [TestCategory("Slow")]
    public void ParameterCountsEqualTorchvisions(string arch, long expected)
    {
        using var net = Architectures.Create(arch, 1000, 224);
        Assert.AreEqual(expected, net.ParameterCount());
        Assert.AreEqual(NetworkFamily.ImageNet, net.Family);
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void UnitsFollowTorchvisionsLayout()
    {
        using var r101 = ImageNetResNet.ResNet101(10, 224);
        Assert.AreEqual(1 + 3 + 4 + 23 + 3, r101.Units.Count);
        Assert.AreEqual("layer2[0]", r101.UnitInfos[4].Name);
        Assert.AreEqual(new FeatureShape(64, 56, 56), r101.UnitInfos[0].Output);       // stem with max-pool
        Assert.AreEqual(new FeatureShape(512, 28, 28), r101.UnitInfos[4].Output);
        Assert.AreEqual(new FeatureShape(2048, 7, 7), r101.UnitInfos[^1].Output);
        using var vgg = Vgg.Vgg13Bn(10, 224);
        Assert.AreEqual(10, vgg.Units.Count);
        Assert.AreEqual(new FeatureShape(512, 14, 14), vgg.UnitInfos[^1].Output);     // four pools inside the units, the fifth in the head
    }

    // Every reference table of each architecture (and a balanced K=3): run segment by segment, each on the previous one's
    // detached output, and compare with the whole network's forward pass.
    [TestMethod]
    [DataRow("resnet34")]
    [DataRow("resnet101")]
    [DataRow("resnet152")]
    [DataRow("resnext101_32x8d")]
    [DataRow("vgg13_bn")]
    [TestCategory("Slow")]
    public void EverySplitChainsToTheNetworksOutput(string arch)
    {
        manual_seed(3);
        using var net = Architectures.Create(arch, 10, 64);
        net.eval();
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        var x = randn(2, 3, 64, 64);
        var expected = net.call(x);
        var plans = SplitTables.ImageNetEntries.Keys.Where(key => key.Arch == arch).Select(key => SplitPlan.Create(net, key.K, key.Table))
            .Append(SplitPlan.Create(net, 3, SplitTables.Balanced)).ToList();
        Assert.IsTrue(plans.Count >= 3);
        foreach (var plan in plans)
        {
            Assert.AreEqual(net.Units.Count, plan.Segments.Sum(s => s.Length));
            var h = x;
            foreach (var segment in plan.Segments) h = net.ForwardUnits(h, segment.Start, segment.End).detach();
            var logits = net.Head.call(h);
            CollectionAssert.AreEqual(new long[] { 2, 10 }, logits.shape);
            Assert.IsTrue(logits.allclose(expected, 1e-4, 1e-5), $"{arch} {plan.Describe(net)}");
        }
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void ReferenceTablesAreTheSpecs()
    {
        using var r101 = ImageNetResNet.ResNet101(10, 64);
        Assert.AreEqual("stem..layer2[0] | layer2[1]..layer4[2]", SplitPlan.Create(r101, 2).Describe(r101));
        Assert.AreEqual("stem..layer2[2] | layer2[3]..layer3[8] | layer3[9]..layer3[16] | layer3[17]..layer4[2]",
            SplitPlan.Create(r101, 4).Describe(r101)); // MAN++ by default
        Assert.AreEqual("stem..layer3[0] | layer3[1]..layer3[9] | layer3[10]..layer3[17] | layer3[18]..layer4[2]",
            SplitPlan.Create(r101, 4, "man").Describe(r101));
        using var r152 = ImageNetResNet.ResNet152(10, 64);
        Assert.AreEqual("stem..layer2[5] | layer2[6]..layer4[2]", SplitPlan.Create(r152, 2).Describe(r152));
        Assert.AreEqual("stem..layer3[13] | layer3[14]..layer4[2]", SplitPlan.Create(r152, 2, "dgl").Describe(r152)); // stem + 25 bottlenecks
        using var x101 = ImageNetResNet.ResNeXt101_32x8d(10, 64);
        Assert.AreEqual("stem..layer2[2] | layer2[3]..layer4[2]", SplitPlan.Create(x101, 2, "infopro").Describe(x101));
        using var vgg = Vgg.Vgg13Bn(10, 64);
        Assert.AreEqual(10, SplitPlan.Create(vgg, 10).Segments.Count(s => s.Length == 1));
        Assert.AreEqual("dgl", SplitPlan.Create(vgg, 10).Table);
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => SplitPlan.Create(r101, 3, "manpp"));
        StringAssert.Contains(e.Message, "resnet101 at K=3");
    }

    // The balancing rule counts each segment's auxiliary head and MAN's copies: a hand-made chain where the boundary cost
    // moves the best cut.
    [TestMethod]
    public void BalancingCountsBoundaryCosts()
    {
        var units = new double[] { 1, 1, 1, 1 };
        CollectionAssert.AreEqual(new[] { 2, 2 }, SplitPlan.Balanced(units, 2).Segments.Select(s => s.Length).ToArray());
        // A head after unit 1 costs 3: cutting there gives max(2 + 3, 2) = 5; after unit 0: max(1 + 0, 3) = 3; after 2: max(3 + 0.5, 1) = 3.5.
        var plan = SplitPlan.Balanced(units, 2, new double[] { 0, 3, 0.5 });
        CollectionAssert.AreEqual(new[] { 1, 3 }, plan.Segments.Select(s => s.Length).ToArray());
    }

    // InfoPro's 512-channel ImageNet head, counted by hand from docs/REFERENCE.md §2.2: decoder 106,699 and
    // classifier 4,643,560 parameters at 1000 classes.
    [TestMethod]
    public void InfoProImageNetHeadHasTheReferenceLayers()
    {
        using var head = new InfoProImageNetHead(new FeatureShape(512, 28, 28), new FeatureShape(3, 224, 224), 1000,
            InfoProLossMode.CrossEntropy, 5, 0.75, ImageNetTransform.ImageNetNormalization);
        Assert.AreEqual(106_699L + 4_643_560L, head.parameters().Sum(p => p.numel()));
        Assert.IsFalse(head.Wide);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        head.eval();
        CollectionAssert.AreEqual(new long[] { 2, 3, 224, 224 }, head.Reconstruct(randn(2, 512, 8, 8)).shape); // up-sampling steps merge
        using var wide = new InfoProImageNetHead(new FeatureShape(1024, 4, 4), new FeatureShape(3, 64, 64), 10,
            InfoProLossMode.CrossEntropy, 5, 1, ImageNetTransform.ImageNetNormalization);
        wide.eval();
        Assert.IsTrue(wide.Wide);
        CollectionAssert.AreEqual(new long[] { 2, 3, 64, 64 }, wide.Reconstruct(randn(2, 1024, 4, 4)).shape);
        CollectionAssert.AreEqual(new long[] { 2, 10 }, wide.call(randn(2, 1024, 4, 4)).shape);
    }

    [TestMethod]
    public void ImageNetLossWeightsFollowTheReference()
    {
        Assert.AreEqual(new InfoProLambdas(5, 0.75, 5, 0.75), InfoProRule.ImageNetLambdas("resnet101"));
        Assert.AreEqual(new InfoProLambdas(5, 0.75, 5, 0.75), InfoProRule.ImageNetLambdas("resnext101_32x8d"));
        Assert.AreEqual(new InfoProLambdas(5, 1, 5, 1), InfoProRule.ImageNetLambdas("resnet152"));
        using var net = ImageNetResNet.ResNet152(10, 64);
        var plan = SplitPlan.Create(net, 4);
        var rule = new InfoProRule(new InfoProSettings());
        for (int j = 0; j < 3; j++)
        {
            using var head = (InfoProImageNetHead)rule.CreateHead(new HeadContext(net, plan, j,
                net.UnitInfos[plan.NextUnit(j)].Output, plan.NextUnit(j), ImageNetTransform.ImageNetNormalization));
            Assert.AreEqual((5.0, 1.0), (head.ReconstructionWeight, head.ClassificationWeight));
        }
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => new InfoProRule(new InfoProSettings { Classifier = AuxClassifierConfig.C1F2 })
            .CreateHead(new HeadContext(net, plan, 0, net.UnitInfos[1].Output, null, ImageNetTransform.ImageNetNormalization)));
        StringAssert.Contains(e.Message, "--aux-config");
    }

    // One step of each backbone at K=2 with MAN on 64×64 images, batch 2: every gradient is finite, and two more steps
    // on the same batch lower the local (first) segment's loss.
    [TestMethod]
    [DataRow("resnet34", "infopro")]
    [DataRow("resnet101", "infopro")]
    [DataRow("resnet152", "infopro")]
    [DataRow("resnext101_32x8d", "infopro")]
    [DataRow("vgg13_bn", "dgl")]
    [TestCategory("Slow")]
    public void EveryBackboneTrainsAtK2WithMan(string arch, string ruleName)
    {
        manual_seed(5);
        using var net = Architectures.Create(arch, 10, 64);
        var plan = SplitPlan.Create(net, 2, SplitTables.Balanced);
        using var trainer = new LocalTrainer(net, plan, LocalLearningRules.Create(ruleName), new MomentumOptions(),
            new OptimizerSettings { LearningRate = 0.01 }, CPU, ImageNetTransform.ImageNetNormalization);
        trainer.SetTraining(true);
        using var x = randn(2, 3, 64, 64);
        using var y = tensor(new long[] { 3, 7 });
        var first = trainer.Step(x, y);
        foreach (var p in net.parameters().Concat(trainer.AuxiliaryModule.parameters()))
            if (p.grad is { } g) Assert.IsTrue(g.isfinite().all().item<bool>(), $"{arch}: a gradient is not finite");
        Assert.IsTrue(first.SegmentLosses.All(float.IsFinite));
        StepResult last = first;
        for (int i = 0; i < 2; i++) last = trainer.Step(x, y);
        Assert.IsTrue(last.SegmentLosses.All(float.IsFinite));
        Assert.IsTrue(last.SegmentLosses[0] < first.SegmentLosses[0], $"{arch}: local losses {first.SegmentLosses[0]} → {last.SegmentLosses[0]}");
    }
}
