using Man.ML.Backend;
using Man.ML.Models;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class ModelTests
{
    // Parameter counts computed by hand from docs/REFERENCE.md §1.1 (bias-free convs, BN with γ and β, fc with bias).
    private static long HandCount(int n, int classes)
    {
        long Conv(int cin, int cout, int k) => (long)cin * cout * k * k;
        long Bn(int c) => 2L * c;
        long total = Conv(3, 16, 3) + Bn(16);
        int[] widths = { 16, 32, 64 };
        int cinStage = 16;
        foreach (int w in widths)
        {
            for (int i = 0; i < n; i++)
            {
                int cin = i == 0 ? cinStage : w;
                total += Conv(cin, w, 3) + Bn(w) + Conv(w, w, 3) + Bn(w);
                if (cin != w) total += Conv(cin, w, 1) + Bn(w); // projection shortcut
            }
            cinStage = w;
        }
        return total + 64L * classes + classes;
    }

    // BatchNormLayer replaces TorchSharp's BatchNorm1d/2d only to hold the Scalar that counts batches (a finalized one
    // crashed pipelined runs); everything it computes must be what TorchSharp's computes, bit for bit.
    [TestMethod]
    [DataRow(new long[] { 6, 5, 4, 3 })]
    [DataRow(new long[] { 8, 5 })]
    [DataRow(new long[] { 4, 5, 7 })]
    public void BatchNormLayerComputesWhatTorchSharpsBatchNormComputes(long[] shape)
    {
        manual_seed(11);
        bool images = shape.Length == 4;
        using var ours = images ? BatchNormLayer.TwoDimensional(5) : BatchNormLayer.OneDimensional(5);
        using nn.Module<Tensor, Tensor> theirs = images ? nn.BatchNorm2d(5) : nn.BatchNorm1d(5);
        using (no_grad())
            foreach (var m in new nn.Module[] { ours, theirs })
            {
                var p = m.named_parameters().ToDictionary(x => x.name, x => x.parameter);
                p["weight"].copy_(linspace(0.5, 1.5, 5));
                p["bias"].copy_(linspace(-0.2, 0.3, 5));
            }
        CollectionAssert.AreEqual(theirs.state_dict().Keys.ToArray(), ours.state_dict().Keys.ToArray(), "state-dict names");
        for (int step = 0; step < 3; step++)
        {
            foreach (bool training in new[] { true, false })
            {
                ours.train(training);
                theirs.train(training);
                using var input = randn(shape).Times(2).Plus(step);
                using var x1 = input.clone().requires_grad_(true);
                using var x2 = input.clone().requires_grad_(true);
                using var y1 = ours.call(x1);
                using var y2 = theirs.call(x2);
                Assert.IsTrue(Same(y1, y2), $"output, step {step}, training {training}");
                using var weights = randn(shape);
                using var l1 = (y1 * weights).sum();
                using var l2 = (y2 * weights).sum();
                l1.backward();
                l2.backward();
                Assert.IsTrue(Same(x1.grad!, x2.grad!), $"input gradient, step {step}, training {training}");
            }
        }
        var a = ours.state_dict();
        var b = theirs.state_dict();
        foreach (var key in b.Keys) Assert.IsTrue(Same(a[key], b[key]), $"{key} after three training steps");
        var grads = ours.parameters().Zip(theirs.parameters());
        foreach (var (g1, g2) in grads) Assert.IsTrue(Same(g1.grad!, g2.grad!), "weight and bias gradients");
        Assert.AreEqual(3L, a["num_batches_tracked"].item<long>());
        Assert.ThrowsExactly<ArgumentException>(() => ours.call(zeros(images ? new long[] { 2, 5 } : new long[] { 2, 5, 3, 3 })));
    }

    private static bool Same(Tensor a, Tensor b)
    {
        if (!a.shape.SequenceEqual(b.shape) || a.dtype != b.dtype) return false;
        using var same = a.eq(b).all();
        return same.item<bool>();
    }

    [TestMethod]
    public void ResNet32HasTheReferenceParameterCount()
    {
        using var net = CifarResNet.ResNet32();
        Assert.AreEqual(466_906L, HandCount(5, 10));
        Assert.AreEqual(466_906L, net.ParameterCount());
    }

    [TestMethod]
    public void ResNet110HasTheReferenceParameterCount()
    {
        using var net = CifarResNet.ResNet110();
        Assert.AreEqual(1_730_714L, HandCount(18, 10));
        Assert.AreEqual(1_730_714L, net.ParameterCount());
    }

    [TestMethod]
    public void ChainsHaveStemPlusThreeNUnitsWithProjectionsAtStageStarts()
    {
        using var net = CifarResNet.ResNet32();
        Assert.AreEqual(16, net.Units.Count);
        Assert.AreEqual("stem", net.UnitInfos[0].Name);
        Assert.AreEqual("layer2[0]", net.UnitInfos[6].Name);
        Assert.AreEqual(new FeatureShape(32, 16, 16), net.UnitInfos[6].Output);
        Assert.AreEqual(new FeatureShape(64, 8, 8), net.UnitInfos[15].Output);
        var blocks = net.Units.Skip(1).Cast<BasicBlock>().ToList();
        CollectionAssert.AreEqual(new[] { 6, 11 }, blocks.Select((b, i) => (b, i)).Where(t => t.b.HasProjection).Select(t => t.i + 1).ToArray());
        using var net110 = CifarResNet.ResNet110();
        Assert.AreEqual(55, net110.Units.Count);
    }

    [TestMethod]
    public void UnitChainForwardMatchesUnitShapesAndHead()
    {
        using var net = new CifarResNet(20, classes: 7);
        net.eval();
        using var x = randn(2, 3, 32, 32);
        using var logits = net.call(x);
        CollectionAssert.AreEqual(new long[] { 2, 7 }, logits.shape);
        var h = x;
        for (int i = 0; i < net.Units.Count; i++)
        {
            var next = net.Units[i].call(h);
            var shape = net.UnitInfos[i].Output;
            CollectionAssert.AreEqual(new long[] { 2, shape.Channels, shape.Height, shape.Width }, next.shape, net.UnitInfos[i].Name);
            h = next;
        }
    }

    [TestMethod]
    public void ArchitectureNamesAreCheckedWithAClearMessage()
    {
        Assert.AreEqual("resnet56", Architectures.Create("ResNet56").Architecture);
        var e = Assert.ThrowsExactly<ArgumentException>(() => Architectures.Create("resnet33"));
        StringAssert.Contains(e.Message, "resnet33");
        Assert.ThrowsExactly<ArgumentException>(() => Architectures.Create("vgg13"));
    }

    [TestMethod]
    public void ConvolutionsAreHeNormalFanOut()
    {
        manual_seed(3);
        using var net = CifarResNet.ResNet110();
        // layer3 convs: 64 out channels, 3x3 -> std sqrt(2/576); 36 such convs hold ~1.3 M weights, so the sample std is tight.
        var weights = net.named_parameters().Where(p => p.name.Contains("conv") && p.parameter.shape[0] == 64 && p.parameter.shape[1] == 64)
            .Select(p => p.parameter.flatten()).ToArray();
        using var all = cat(weights);
        double std = all.std().item<float>();
        Assert.AreEqual(Math.Sqrt(2.0 / 576), std, 0.002);
    }
}
