using Man.ML.Data;
using Man.ML.Diagnostics;
using Man.ML.Models;
using Man.ML.Training;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

[TestClass]
public sealed class AnalysisTests
{
    [TestMethod]
    public void CkaOfARepresentationWithItselfIsOne()
    {
        manual_seed(1);
        using var x = randn(200, 30);
        Assert.AreEqual(1.0, Cka.Compute(x, x, 50), 1e-9);
    }

    [TestMethod]
    public void CkaIsInvariantToOrthogonalTransformsAndIsotropicScaling()
    {
        manual_seed(2);
        using var x = randn(120, 10);
        using var y = randn(120, 12).PlusInPlace(x.matmul(randn(10, 12)));
        double baseline = Cka.Compute(x, y, 40);
        var (q, _) = linalg.qr(randn(12, 12));
        Assert.AreEqual(baseline, Cka.Compute(x, y.matmul(q), 40), 1e-6, "orthogonal transform");
        Assert.AreEqual(baseline, Cka.Compute(x.Times(7.5), y, 40), 1e-9, "isotropic scaling");
        using var unrelated = randn(120, 12);
        Assert.IsTrue(Cka.Compute(x, unrelated, 40) < 0.3 * baseline, "unrelated features should align much less");
    }

    [TestMethod]
    public void CkaMatchesAHandComputation()
    {
        // Six samples, one minibatch: the unbiased HSIC (Song et al., 2012) written out with loops over the Gram matrices.
        double[][] xs = { new[] { 1.0, 0 }, new[] { 0.5, 2 }, new[] { -1.0, 1 }, new[] { 2.0, -1 }, new[] { 0.0, 0.5 }, new[] { 1.5, 1.5 } };
        double[][] ys = { new[] { 2.0 }, new[] { 1.0 }, new[] { -0.5 }, new[] { 3.0 }, new[] { 0.2 }, new[] { 1.1 } };
        double Hsic(double[][] a, double[][] b)
        {
            int n = a.Length;
            double Dot(double[] u, double[] v) => u.Zip(v).Sum(p => p.First * p.Second);
            double K(int i, int j) => i == j ? 0 : Dot(a[i], a[j]);
            double L(int i, int j) => i == j ? 0 : Dot(b[i], b[j]);
            double trace = 0, sumK = 0, sumL = 0, cross = 0;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                {
                    trace += K(i, j) * L(j, i);
                    sumK += K(i, j);
                    sumL += L(i, j);
                }
            for (int i = 0; i < n; i++)
            {
                double rowK = 0, rowL = 0;
                for (int j = 0; j < n; j++) { rowK += K(j, i); rowL += L(i, j); }
                cross += rowK * rowL;
            }
            return (trace + sumK * sumL / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross) / (n * (n - 3));
        }
        double expected = Hsic(xs, ys) / Math.Sqrt(Hsic(xs, xs) * Hsic(ys, ys));
        using var x = tensor(xs.SelectMany(r => r).Select(v => (float)v).ToArray(), new long[] { 6, 2 });
        using var y = tensor(ys.SelectMany(r => r).Select(v => (float)v).ToArray(), new long[] { 6, 1 });
        Assert.AreEqual(expected, Cka.Compute(x, y, 6), 1e-6);
    }

    [TestMethod]
    public void TheProbeSeparatesSeparableFeaturesAndNotShuffledLabels()
    {
        var random = new Random(4);
        (float[] X, long[] Y) Make(int n)
        {
            var x = new float[n * 8];
            var y = new long[n];
            for (int i = 0; i < n; i++)
            {
                y[i] = random.Next(4);
                for (int d = 0; d < 8; d++) x[i * 8 + d] = (float)(random.NextDouble() - 0.5 + (d == y[i] ? 3 : 0));
            }
            return (x, y);
        }
        var (xTrain, yTrain) = Make(400);
        var (xVal, yVal) = Make(200);
        Assert.IsTrue(LinearProbe.Accuracy(xTrain, yTrain, xVal, yVal, 4) > 0.97);
        var shuffled = yTrain.OrderBy(_ => random.Next()).ToArray();
        double chance = LinearProbe.Accuracy(xTrain, shuffled, xVal, yVal, 4);
        Assert.IsTrue(chance < 0.4, $"shuffled labels gave {chance:P1} (chance is 25%)");
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void TheAnalysisCommandsRunOnACheckpointAndWritePngs()
    {
        var dir = TestSupport.NewTempFolder();
        var a = Path.Combine(dir, "a");
        var b = Path.Combine(dir, "b");
        foreach (var (folder, seed) in new[] { (a, 1), (b, 2) })
        {
            Directory.CreateDirectory(folder);
            manual_seed(seed);
            using var net = new CifarResNet(8);
            ModelCheckpoint.Save(Path.Combine(folder, "model.ckpt"), net, new CheckpointInfo
            {
                Architecture = "resnet8", Classes = 10, ImageSize = 32,
                NormalizationMean = Normalization.Cifar.Mean, NormalizationStd = Normalization.Cifar.Std,
            });
        }
        var probe = TestSupport.RunManml(new[] { "probe", "--model", Path.Combine(a, "model.ckpt"), Path.Combine(b, "model.ckpt"),
            "--probe-train", "200", "--probe-val", "100", "--out", dir });
        Assert.AreEqual(0, probe.ExitCode, probe.Stderr);
        var cka = TestSupport.RunManml(new[] { "cka", "--model", Path.Combine(a, "model.ckpt"), "--reference", Path.Combine(b, "model.ckpt"),
            "--images", "64", "--batch-size", "32", "--out", dir });
        Assert.AreEqual(0, cka.ExitCode, cka.Stderr);
        var features = TestSupport.RunManml(new[] { "features", "--model", Path.Combine(a, "model.ckpt"), "--unit", "1", "--out", dir });
        Assert.AreEqual(0, features.ExitCode, features.Stderr);
        foreach (var png in new[] { "probe.png", "cka.png", "features-a-unit1-image0.png" })
            CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(Path.Combine(dir, png))[..4], png);
        using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "cka.json")));
        Assert.AreEqual(4, json.RootElement.GetProperty("models")[0].GetProperty("per_unit").GetArrayLength());
        var bad = TestSupport.RunManml(new[] { "features", "--model", Path.Combine(a, "model.ckpt"), "--unit", "9", "--out", dir });
        Assert.AreEqual(2, bad.ExitCode);
        StringAssert.Contains(bad.Stderr, "--unit 9");
        Directory.Delete(dir, true);
    }
}
