using Man.ML.Data;
using Man.ML.Training;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

[TestClass]
public sealed class AugmentationAndScheduleTests
{
    [TestMethod]
    public void NormalizationUsesTheCifarConstants()
    {
        using var x = HeldScalars.Full(new long[] { 1, 3, 2, 2 }, 0.5);
        using var y = Normalization.Cifar.Apply(x);
        Assert.AreEqual((0.5 - 125.3 / 255) / (63.0 / 255), y[0, 0, 0, 0].item<float>(), 1e-5);
        Assert.AreEqual((0.5 - 113.9 / 255) / (66.7 / 255), y[0, 2, 1, 1].item<float>(), 1e-5);
    }

    [TestMethod]
    public void CropAndFlipAreDrawnPerSample()
    {
        // 64 copies of one image with distinct pixels: per-sample augmentation makes (almost all) copies differ.
        using var modulus = TorchSharp.ScalarExtensionMethods.ToScalar(251);
        using var one = HeldScalars.Arange(3 * 32 * 32).remainder(modulus).to_type(ScalarType.Byte).view(1, 3, 32, 32);
        using var batch = one.expand(64, 3, 32, 32).contiguous();
        using var augmented = ImageAugmentation.Cifar.Apply(batch, new Random(1), Normalization.Cifar);
        CollectionAssert.AreEqual(new long[] { 64, 3, 32, 32 }, augmented.shape);
        var distinct = Enumerable.Range(0, 64).Select(i => string.Join(",", augmented[i].flatten().data<float>().Take(200))).Distinct().Count();
        Assert.IsTrue(distinct > 20, $"only {distinct} distinct augmentations among 64 samples");
        // Without padding and flipping it is plain normalisation.
        var plain = ImageAugmentation.None;
        using var p = plain.Apply(batch, new Random(1), Normalization.Cifar);
        using var expected = Normalization.Cifar.Apply(batch.to_type(ScalarType.Float32).DividedBy(255));
        Assert.IsTrue(p.allclose(expected));
    }

    [TestMethod]
    public void ReflectPaddingCropReproducesAKnownShift()
    {
        // With padding 1 and a forced offset the crop is the image shifted by one pixel with reflected borders.
        using var img = HeldScalars.Arange(16).to_type(ScalarType.Byte).view(1, 1, 4, 4);
        var aug = new ImageAugmentation(1, true, false);
        var identity = new Normalization(new[] { 0f }, new[] { 1f / 255 });
        // Random(…) draws dy then dx in 0..2; search a seed giving dy = 0, dx = 2 (shift up-left by one row, right by one column).
        int seed = Enumerable.Range(0, 1000).First(s => { var r = new Random(s); return r.Next(3) == 0 && r.Next(3) == 2; });
        using var y = aug.Apply(img, new Random(seed), identity);
        // Row -1 reflects to row 1; columns 1..4 with column 4 reflecting to column 2.
        float[] expected = { 5, 6, 7, 6, 1, 2, 3, 2, 5, 6, 7, 6, 9, 10, 11, 10 };
        CollectionAssert.AreEqual(expected, y.flatten().data<float>().Select(v => (float)Math.Round(v)).ToArray());
    }

    [TestMethod]
    public void ScheduleFollowsTheReferenceFormulaPerEpochFor400Epochs()
    {
        var s = new CosineWarmupSchedule(0.8, 400, 49);
        Assert.IsFalse(s.PerIteration);
        Assert.AreEqual(10, s.WarmupSteps);
        Assert.AreEqual(0.01, s.Rate(0, 0), 1e-12);                      // e = 1
        Assert.AreEqual(0.01, s.Rate(0, 48), 1e-12);                     // constant within the epoch
        Assert.AreEqual(0.5 * 0.8 * (1 + Math.Cos(Math.PI * 10 / 400)) * 0.9 + 0.001, s.Rate(9, 0), 1e-12);
        Assert.AreEqual(0.5 * 0.8 * (1 + Math.Cos(Math.PI * 11 / 400)), s.Rate(10, 0), 1e-12);
        Assert.AreEqual(0.0, s.Rate(399, 0), 1e-12);
    }

    [TestMethod]
    public void ShortRunsAnnealPerIteration()
    {
        var s = new CosineWarmupSchedule(0.1, 3, 40);   // 120 iterations, warm-up 3
        Assert.IsTrue(s.PerIteration);
        Assert.AreEqual(120, s.TotalSteps);
        Assert.AreEqual(3, s.WarmupSteps);
        Assert.AreEqual(0.1 / 80, s.Rate(0, 0), 1e-12);
        Assert.IsTrue(s.Rate(0, 0) < s.Rate(0, 1) && s.Rate(0, 1) < s.Rate(0, 2) && s.Rate(0, 2) < s.Rate(0, 3), "warm-up rises");
        Assert.IsTrue(s.Rate(1, 0) > s.Rate(2, 0));
        Assert.AreEqual(0.0, s.Rate(2, 39), 1e-12);
    }
}
