using System.Text.Json;

namespace Man.ML.Tests;

[TestClass]
public sealed class MemoryGuardTests
{
    public TestContext TestContext { get; set; } = null!;

    private double PeakMiB(params string[] args)
    {
        var env = new Dictionary<string, string> { ["MALLOC_MMAP_THRESHOLD_"] = "65536" };
        var result = TestSupport.RunManml(
            new[] { "measure-memory", "--arch", "resnet32", "--batch-size", "64", "--steps", "2", "--warmup", "2" }.Concat(args), env);
        Assert.AreEqual(0, result.ExitCode, result.Stderr);
        var line = result.Stdout.Trim().Split('\n')[^1];
        using var json = JsonDocument.Parse(line);
        Assert.IsTrue(json.RootElement.GetProperty("malloc_mmap_threshold_set").GetBoolean());
        TestContext.WriteLine(line);
        return json.RootElement.GetProperty("peak_memory_mb").GetDouble();
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void DglAtK16TrainsInAtMostSixTenthsOfTheEndToEndPeak()
    {
        double e2e = PeakMiB("--rule", "e2e", "--k", "1");
        double dgl = PeakMiB("--rule", "dgl", "--k", "16");
        TestContext.WriteLine($"ResNet-32, batch 64: E2E K=1 {e2e:0.0} MiB, DGL K=16 {dgl:0.0} MiB, ratio {dgl / e2e:0.00}");
        Assert.IsTrue(e2e > 50, $"the end-to-end peak ({e2e} MiB) is implausibly small");
        Assert.IsTrue(dgl <= 0.6 * e2e, $"DGL K=16 peak {dgl:0.0} MiB is more than 0.6 x the K=1 peak {e2e:0.0} MiB");
    }
}
