using Man.ML.Local;
using Man.ML.Models;

namespace Man.ML.Tests;

[TestClass]
public sealed class SplitPlanTests
{
    private static int[] Lengths(SplitPlan plan) => plan.Segments.Select(s => s.Length).ToArray();

    [TestMethod]
    public void ResNet32PresetsMatchTheReferenceTables()
    {
        using var net = CifarResNet.ResNet32();
        // docs/REFERENCE.md §1.3, by unit names.
        Assert.AreEqual("stem..layer2[1] | layer2[2]..layer3[4]", SplitPlan.Create(net, 2).Describe(net));
        Assert.AreEqual("stem..layer1[4] | layer2[0]..layer2[4] | layer3[0]..layer3[4]", SplitPlan.Create(net, 3).Describe(net));
        Assert.AreEqual("stem..layer1[2] | layer1[3]..layer2[1] | layer2[2]..layer3[0] | layer3[1]..layer3[4]", SplitPlan.Create(net, 4).Describe(net));
        Assert.AreEqual("stem..layer1[0] | layer1[1]..layer1[2] | layer1[3]..layer1[4] | layer2[0]..layer2[1] | " +
                        "layer2[2]..layer2[3] | layer2[4]..layer3[0] | layer3[1]..layer3[2] | layer3[3]..layer3[4]",
            SplitPlan.Create(net, 8).Describe(net));
        var k16 = SplitPlan.Create(net, 16);
        Assert.AreEqual(SplitSource.ReferencePreset, k16.Source);
        CollectionAssert.AreEqual(Enumerable.Repeat(1, 16).ToArray(), Lengths(k16));
        var k15 = SplitPlan.Create(net, 15); // the MAN ECCV code's "K=16": stem merged into layer1[0]
        CollectionAssert.AreEqual(new[] { 2 }.Concat(Enumerable.Repeat(1, 14)).ToArray(), Lengths(k15));
    }

    [TestMethod]
    public void ResNet110PresetsMatchTheReferenceTables()
    {
        using var net = CifarResNet.ResNet110();
        // K=32 segment lengths from docs/REFERENCE.md §1.3 (the stem adds one unit to segment 0).
        int[] stage12 = { 2, 1, 2, 1, 2, 2, 2, 2, 1, 2, 1 };
        int[] stage3 = { 2, 2, 1, 2, 1, 2, 2, 2, 2, 2 };
        var expected = stage12.Concat(stage12).Concat(stage3).ToArray();
        expected[0] += 1;
        CollectionAssert.AreEqual(expected, Lengths(SplitPlan.Create(net, 32)));
        Assert.AreEqual("stem..layer2[8] | layer2[9]..layer3[17]", SplitPlan.Create(net, 2).Describe(net));
        Assert.AreEqual("stem..layer1[11] | layer1[12]..layer2[7] | layer2[8]..layer3[3] | layer3[4]..layer3[17]", SplitPlan.Create(net, 4).Describe(net));
        var k16 = SplitPlan.Create(net, 16);
        Assert.AreEqual("stem..layer1[1]", k16.Describe(net).Split(" | ")[0]);
        Assert.AreEqual("layer2[12]..layer2[15]", k16.Describe(net).Split(" | ")[10]);
        CollectionAssert.AreEqual(Enumerable.Repeat(1, 55).ToArray(), Lengths(SplitPlan.Create(net, 55)));
        CollectionAssert.AreEqual(new[] { 2 }.Concat(Enumerable.Repeat(1, 53)).ToArray(), Lengths(SplitPlan.Create(net, 54)));
    }

    [TestMethod]
    public void KOutOfRangeIsAClearError()
    {
        using var net = CifarResNet.ResNet32();
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => SplitPlan.Create(net, 17));
        StringAssert.Contains(e.Message, "between 1 and 16");
        Assert.ThrowsExactly<InvalidOptionException>(() => SplitPlan.Create(net, 0));
    }

    [TestMethod]
    public void EveryKFromOneToTheUnitCountGivesContiguousCoveringSegments()
    {
        using var net = CifarResNet.ResNet110();
        for (int k = 1; k <= 55; k++)
        {
            var plan = SplitPlan.Create(net, k);
            Assert.AreEqual(k, plan.K);
            Assert.AreEqual(0, plan.Segments[0].Start);
            Assert.AreEqual(55, plan.Segments[^1].End);
            for (int j = 1; j < k; j++) Assert.AreEqual(plan.Segments[j - 1].End, plan.Segments[j].Start);
            Assert.IsTrue(plan.Segments.All(s => s.Length >= 1));
        }
    }

    [TestMethod]
    public void BalancingGivesEqualSegmentsForEqualCosts()
    {
        var plan = SplitPlan.Balanced(Enumerable.Repeat(1.0, 12).ToArray(), 4);
        CollectionAssert.AreEqual(new[] { 3, 3, 3, 3 }, Lengths(plan));
    }

    [TestMethod]
    public void BalancingReachesTheBruteForceMinimalPeak()
    {
        var random = new Random(5);
        for (int trial = 0; trial < 30; trial++)
        {
            int n = random.Next(3, 10), k = random.Next(1, n + 1);
            var costs = Enumerable.Range(0, n).Select(_ => random.NextDouble() * 10).ToArray();
            var plan = SplitPlan.Balanced(costs, k);
            double Peak(IEnumerable<(int, int)> segs) => segs.Max(s => costs[s.Item1..s.Item2].Sum());
            double got = Peak(plan.Segments.Select(s => (s.Start, s.End)));
            double best = double.MaxValue;
            // Enumerate every way to place k-1 cuts among n-1 gaps.
            foreach (var cuts in Combinations(Enumerable.Range(1, n - 1).ToArray(), k - 1))
            {
                var bounds = new[] { 0 }.Concat(cuts).Concat(new[] { n }).ToArray();
                best = Math.Min(best, Peak(bounds.Zip(bounds.Skip(1))));
            }
            Assert.AreEqual(best, got, 1e-9, $"n={n} k={k}");
        }
    }

    private static IEnumerable<int[]> Combinations(int[] items, int choose)
    {
        if (choose == 0) { yield return Array.Empty<int>(); yield break; }
        for (int i = 0; i <= items.Length - choose; i++)
            foreach (var rest in Combinations(items[(i + 1)..], choose - 1))
                yield return new[] { items[i] }.Concat(rest).ToArray();
    }
}
