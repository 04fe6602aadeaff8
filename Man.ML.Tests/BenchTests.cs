using System.Text.Json;
using Man.ML.Diagnostics;
using Man.ML.Local;
using Man.ML.Models;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class BenchTests
{
    [TestMethod]
    public void TheActivationFloorOfASmallNetworkEqualsAHandCount()
    {
        // ResNet-8, one sample. Stem: its 3x32x32 input, conv output and ReLU output (16x32x32 each). layer1[0] (16->16):
        // conv1 out, ReLU out, conv2 out, block output (16x32x32 each; its input is the stem's kept output). layer2[0]
        // and layer3[0] (projection): the same four plus the projection conv's output, at 32x16x16 and 64x8x8. Head: the
        // 64 pooled features and the 10 logits' softmax.
        long handCount = 3 * 1024 + 2 * 16 * 1024 + 4 * 16 * 1024 + 5 * 32 * 256 + 5 * 64 * 64 + 64 + 10;
        Assert.AreEqual(162_890L, handCount);
        using var net = new CifarResNet(8);
        using (var e2e = new LocalTrainer(net, SplitPlan.Create(net, 1), new EndToEndRule(), null, new OptimizerSettings(), CPU))
        {
            var cost = TrainingCost.Compute(e2e, batchSize: 1);
            Assert.AreEqual(handCount, cost.Segments[0].ActivationElements);
            Assert.AreEqual(handCount * 4 * 128, TrainingCost.Compute(e2e, 128).ActivationFloorBytes);
        }

        // DGL, every unit its own segment: segment 0 is the stem plus the DGL head on 16x32x32 (pooled to 8x8: the pooled
        // map and three conv/ReLU pairs, 7 x 16x8x8; then 16x2x2 features through two hidden layers, 5 x 64; 10 logits).
        using var net4 = new CifarResNet(8);
        using var dgl = new LocalTrainer(net4, SplitPlan.Create(net4, 4), new DglRule(), null, new OptimizerSettings(), CPU);
        var segments = TrainingCost.Compute(dgl, 1).Segments;
        Assert.AreEqual(3 * 1024 + 2 * 16 * 1024 + 7 * 16 * 64 + 5 * 64 + 10, segments[0].ActivationElements);
        Assert.IsTrue(segments.All(s => s.ManElements == 0));
    }

    [TestMethod]
    public void StepFlopsOfResNet32MatchTheConvolutionCount()
    {
        // Forward multiply-adds of ResNet-32's convolutions and linear layer, by hand, times 2 FLOPs, times 3 for a step.
        long Conv(long cin, long cout, long k, long side) => cin * cout * k * k * side * side;
        long macs = Conv(3, 16, 3, 32) + 10 * Conv(16, 16, 3, 32)
                    + Conv(16, 32, 3, 16) + Conv(16, 32, 1, 16) + 9 * Conv(32, 32, 3, 16)
                    + Conv(32, 64, 3, 8) + Conv(32, 64, 1, 8) + 9 * Conv(64, 64, 3, 8) + 64 * 10;
        using var net = CifarResNet.ResNet32();
        using var e2e = new LocalTrainer(net, SplitPlan.Create(net, 1), new EndToEndRule(), null, new OptimizerSettings(), CPU);
        Assert.AreEqual(3.0 * 2 * macs * 128 / 1e9, TrainingCost.Compute(e2e, 128).StepGflops, 1e-9);
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void TheBenchHarnessWritesItsSchemaFromChildProcesses()
    {
        var outDir = TestSupport.NewTempFolder();
        var result = TestSupport.RunLab(new[]
        {
            "bench", "--out", outDir, "--configs", "resnet8-k1-e2e,resnet8-k2-dgl,resnet8-k2-dgl-man", "--batch-size", "8", "--steps", "1",
        });
        Assert.AreEqual(0, result.ExitCode, result.Stderr + result.Stdout);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "bench.json")));
        Assert.IsTrue(json.RootElement.GetProperty("peak_matrix_gflops").GetDouble() > 0);
        var configurations = json.RootElement.GetProperty("configurations").EnumerateArray().ToList();
        Assert.AreEqual(3, configurations.Count);
        string[] numbers = { "batch_size", "peak_memory_mb", "step_ms_median", "step_ms_min", "step_ms_max", "images_per_second",
            "activation_floor_mb", "gflops_per_step", "achieved_gflops" };
        foreach (var c in configurations)
        {
            Assert.IsFalse(c.TryGetProperty("error", out var error), error.ToString());
            foreach (var key in numbers) Assert.AreEqual(JsonValueKind.Number, c.GetProperty(key).ValueKind, key);
            foreach (var key in new[] { "name", "arch", "rule" }) Assert.AreEqual(JsonValueKind.String, c.GetProperty(key).ValueKind, key);
            Assert.AreEqual(JsonValueKind.Number, c.GetProperty("k").ValueKind);
            Assert.IsTrue(c.GetProperty("peak_memory_mb").GetDouble() > 0);
            Assert.IsTrue(c.GetProperty("step_ms_min").GetDouble() <= c.GetProperty("step_ms_median").GetDouble());
        }
        Assert.AreEqual("resnet8-k2-dgl-man", configurations[2].GetProperty("name").GetString());
        Assert.IsTrue(configurations[2].GetProperty("man").GetBoolean());
        StringAssert.Contains(File.ReadAllText(Path.Combine(outDir, "bench.md")), "| resnet8-k2-dgl-man |");
        foreach (var png in new[] { "memory-vs-k-resnet8.png", "throughput-vs-k-resnet8.png", "man-overhead.png" })
        {
            var bytes = File.ReadAllBytes(Path.Combine(outDir, png));
            CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, bytes[..4], png);
        }
        var bad = TestSupport.RunLab(new[] { "bench", "--out", outDir, "--configs", "resnet8-k2-nonsense" });
        Assert.AreEqual(2, bad.ExitCode);
        StringAssert.Contains(bad.Stderr, "resnet8-k2-nonsense");
        Directory.Delete(outDir, true);
    }

    [TestMethod]
    public void PlotWritesAPngOfTrainingCurves()
    {
        var outDir = TestSupport.NewTempFolder();
        var run = Path.Combine(outDir, "run");
        Directory.CreateDirectory(run);
        File.WriteAllText(Path.Combine(run, "metrics.json"),
            """{"config":{},"epochs":[{"epoch":1,"train_accuracy":0.2,"val_accuracy":0.25},""" +
            """{"epoch":2,"train_accuracy":0.4,"val_accuracy":0.35}],"final":{}}""");
        var png = Path.Combine(outDir, "curves.png");
        var result = TestSupport.RunManml(new[] { "analyse", "plot", "--runs", run, "--out", png });
        Assert.AreEqual(0, result.ExitCode, result.Stderr);
        CollectionAssert.AreEqual(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, File.ReadAllBytes(png)[..4]);
        Directory.Delete(outDir, true);
    }
}
