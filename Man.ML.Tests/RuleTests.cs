using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Models;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class RuleTests
{
    private static readonly FeatureShape[] CifarFeatures = { new(16, 32, 32), new(32, 16, 16), new(64, 8, 8) };
    private static readonly FeatureShape[] StlFeatures = { new(16, 96, 96), new(32, 48, 48), new(64, 24, 24) };

    [TestMethod]
    public void DglHeadsGiveClassLogitsForEveryFeatureSize()
    {
        foreach (var shape in CifarFeatures.Concat(StlFeatures))
        {
            using var x = randn(4, shape.Channels, shape.Height, shape.Width);
            foreach (AuxiliaryHead head in new AuxiliaryHead[] { new DglHead(shape, 10), new DglManPlusPlusHead(shape, 7) })
            {
                head.train();
                using var y = head.call(x);
                CollectionAssert.AreEqual(new long[] { 4, head is DglHead ? 10 : 7 }, y.shape, $"{head.GetType().Name} on {shape}");
            }
        }
    }

    [TestMethod]
    public void InfoProHeadsGiveTheirShapesForEveryConfigurationAndSize()
    {
        foreach (var (shapes, image) in new[] { (CifarFeatures, new FeatureShape(3, 32, 32)), (StlFeatures, new FeatureShape(3, 96, 96)) })
            foreach (var shape in shapes)
                foreach (AuxClassifierConfig config in Enum.GetValues<AuxClassifierConfig>())
                    foreach (var mode in new[] { InfoProLossMode.CrossEntropy, InfoProLossMode.Contrastive })
                    {
                        using var head = new InfoProHead(shape, image, 10, config, mode, 1, 1, Normalization.Cifar);
                        head.train();
                        using var x = randn(4, shape.Channels, shape.Height, shape.Width);
                        using var output = head.call(x);
                        CollectionAssert.AreEqual(new long[] { 4, mode == InfoProLossMode.CrossEntropy ? 10 : 128 }, output.shape,
                            $"{config} {mode} on {shape}");
                        using var reconstruction = head.Reconstruct(x);
                        CollectionAssert.AreEqual(new long[] { 4, 3, image.Height, image.Width }, reconstruction.shape);
                        Assert.IsTrue(reconstruction.min().item<float>() >= 0 && reconstruction.max().item<float>() <= 1);
                    }
    }

    [TestMethod]
    public void InfoProClassifierLayersFollowTheReferenceTable()
    {
        // docs/REFERENCE.md §2.1: 2c2f on 16 channels = conv s2 16→32, conv s1 32→32, Linear(32→128), Linear(128→out).
        var c16 = InfoProHead.AuxClassifier(16, AuxClassifierConfig.C2F2, 10);
        var convs = c16.modules().OfType<Conv2dLayer>().ToList();
        CollectionAssert.AreEqual(new long[] { 32, 16, 3, 3 }, convs[0].Weight.shape);
        Assert.AreEqual(2, convs[0].Stride);
        CollectionAssert.AreEqual(new long[] { 32, 32, 3, 3 }, convs[1].Weight.shape);
        var linears = c16.modules().OfType<LinearLayer>().ToList();
        CollectionAssert.AreEqual(new long[] { 128, 32 }, linears[0].Weight.shape);
        CollectionAssert.AreEqual(new long[] { 10, 128 }, linears[1].Weight.shape);
        // 1c1f on 64 channels: conv s1 64→64, Linear(64→out).
        var c64 = InfoProHead.AuxClassifier(64, AuxClassifierConfig.C1F1, 10);
        var conv64 = c64.modules().OfType<Conv2dLayer>().Single();
        Assert.AreEqual(1, conv64.Stride);
        CollectionAssert.AreEqual(new long[] { 64, 64, 3, 3 }, conv64.Weight.shape);
        Assert.AreEqual(1, c64.modules().OfType<LinearLayer>().Count());
        // 1c3f: three linear layers; 0c2f: none convolutional.
        Assert.AreEqual(3, InfoProHead.AuxClassifier(32, AuxClassifierConfig.C1F3, 10).modules().OfType<LinearLayer>().Count());
        Assert.AreEqual(0, InfoProHead.AuxClassifier(32, AuxClassifierConfig.C0F2, 10).modules().OfType<Conv2dLayer>().Count());
    }

    [TestMethod]
    public void PredSimPoolsToAtMost1024FeaturesAsTheReference()
    {
        // docs/REFERENCE.md §2.4: 16@32² → 4×4, 32@16² → (4, 2), 64@8² → 2×2; all 1,024 features.
        CollectionAssert.AreEqual(new long[] { 4, 4 }, PredSimHead.PoolingKernel(new FeatureShape(16, 32, 32)));
        CollectionAssert.AreEqual(new long[] { 4, 2 }, PredSimHead.PoolingKernel(new FeatureShape(32, 16, 16)));
        CollectionAssert.AreEqual(new long[] { 2, 2 }, PredSimHead.PoolingKernel(new FeatureShape(64, 8, 8)));
        foreach (var shape in CifarFeatures.Concat(StlFeatures))
        {
            using var head = new PredSimHead(shape, 10);
            using var x = randn(3, shape.Channels, shape.Height, shape.Width);
            using var logits = head.call(x);
            CollectionAssert.AreEqual(new long[] { 3, 10 }, logits.shape);
            var k = head.PoolKernel;
            Assert.IsTrue(shape.Channels * (shape.Height / k[0]) * (shape.Width / k[1]) <= 1024);
            using var loss = head.Loss(x, new LocalTargets(tensor(new long[] { 1, 2, 1 }), randn(3, 3, 32, 32)));
            Assert.AreEqual(0, loss.dim());
        }
    }

    [TestMethod]
    public void TheContrastiveLossMatchesAHandComputation()
    {
        double[][] f = { new[] { 1.0, 0.0 }, new[] { 0.6, 0.8 }, new[] { 0.0, 2.0 } };
        long[] labels = { 0, 0, 1 };
        // By hand: normalise, s_ij = f_i·f_j / τ; for anchor i, log p_ij = s_ij − log Σ_{k≠i} exp(s_ik);
        // loss_i = −mean over positives j≠i of log p_ij (0 when none); loss = mean_i loss_i.
        double tau = 0.07;
        var n = f.Select(v => { double norm = Math.Sqrt(v[0] * v[0] + v[1] * v[1]); return new[] { v[0] / norm, v[1] / norm }; }).ToArray();
        double Sim(int i, int j) => (n[i][0] * n[j][0] + n[i][1] * n[j][1]) / tau;
        double total = 0;
        for (int i = 0; i < 3; i++)
        {
            double denominator = Math.Log(Enumerable.Range(0, 3).Where(k => k != i).Sum(k => Math.Exp(Sim(i, k))));
            var positives = Enumerable.Range(0, 3).Where(j => j != i && labels[j] == labels[i]).ToList();
            total += positives.Count == 0 ? 0 : -positives.Average(j => Sim(i, j) - denominator);
        }
        double expected = total / 3;
        using var features = tensor(f.SelectMany(v => v.Select(x => (float)x)).ToArray(), new long[] { 3, 2 });
        using var loss = SupervisedContrastiveLoss.Compute(features, tensor(labels));
        Assert.AreEqual(expected, loss.item<float>(), 1e-4);
    }

    [TestMethod]
    public void ThePredSimSimilarityMatrixMatchesAHandComputation()
    {
        // Three samples, four channels of 2×2: per-channel unbiased spatial std, centred, L2-normalised rows, R = X·Xᵀ.
        var random = new Random(3);
        var values = Enumerable.Range(0, 3 * 4 * 4).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        double[,] rows = new double[3, 4];
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 4; c++)
            {
                var v = Enumerable.Range(0, 4).Select(p => (double)values[b * 16 + c * 4 + p]).ToArray();
                double mean = v.Average();
                rows[b, c] = Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / 3);
            }
        double[][] Normalise(double[,] m, int cols) => Enumerable.Range(0, m.GetLength(0)).Select(b =>
        {
            var r = Enumerable.Range(0, cols).Select(c => m[b, c]).ToArray();
            double mean = r.Average();
            var centred = r.Select(x => x - mean).ToArray();
            double norm = Math.Sqrt(centred.Sum(x => x * x)) + 1e-8;
            return centred.Select(x => x / norm).ToArray();
        }).ToArray();
        double Dot(double[] a, double[] b) => a.Zip(b).Sum(p => p.First * p.Second);
        var featureRows = Normalise(rows, 4);
        using var x = tensor(values, new long[] { 3, 4, 2, 2 });
        using var r = PredSimHead.SimilarityMatrix(x);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                Assert.AreEqual(Math.Clamp(Dot(featureRows[i], featureRows[j]), -1, 1), r[i, j].item<float>(), 1e-5);

        // Labels (0, 0, 2) of 3 classes: one-hot rows centred and normalised; then the MSE between the two matrices.
        var oneHot = new double[3, 3] { { 1, 0, 0 }, { 1, 0, 0 }, { 0, 0, 1 } };
        var labelRows = Normalise(oneHot, 3);
        double mse = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 3; j++)
                mse += Math.Pow(Math.Clamp(Dot(featureRows[i], featureRows[j]), -1, 1) - Math.Clamp(Dot(labelRows[i], labelRows[j]), -1, 1), 2);
        mse /= 9;
        using var labelMatrix = PredSimHead.SimilarityMatrix(nn.functional.one_hot(tensor(new long[] { 0, 0, 2 }), 3).to_type(ScalarType.Float32));
        using var loss = nn.functional.mse_loss(r, labelMatrix);
        Assert.AreEqual(mse, loss.item<float>(), 1e-5);
    }
}
