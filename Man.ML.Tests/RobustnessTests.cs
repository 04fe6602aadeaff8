using System.Diagnostics;
using Man.ML.Data;
using Man.ML.Diagnostics;
using Man.ML.Training;
using TorchSharp;

namespace Man.ML.Tests;

[TestClass]
public sealed class RobustnessTests
{
    public TestContext TestContext { get; set; } = null!;

    private static long LiveTensors() => DisposeScopeManager.Statistics.ThreadTotalLiveCount;

    [TestMethod]
    [TestCategory("Slow")]
    public void LiveTensorsAndMemoryStayFlatOverTwentyEpochsAndCancellingReleasesEverything()
    {
        using var train = TestSupport.SampleImages(0, 64);
        using var val = TestSupport.SampleImages(5000, 32);
        var live = new List<long>();
        var resident = new List<long>();
        var trainer = new Trainer(new TrainingOptions { Architecture = "resnet8", K = 2, Epochs = 20, BatchSize = 32, Seed = 1 });
        trainer.EpochCompleted += _ =>
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            live.Add(LiveTensors());
            resident.Add(ProcessMemory.ResidentBytes());
        };
        long before = LiveTensors();
        var result = trainer.Train(train, val);
        TestContext.WriteLine($"live tensors per epoch: {string.Join(' ', live)}; RSS MiB: {string.Join(' ', resident.Select(r => r / 1048576))}");
        Assert.IsTrue(live.Skip(1).Max() - live.Skip(1).Min() <= 2, $"live tensors drift across epochs: {string.Join(' ', live)}");
        Assert.IsTrue(resident[^1] - resident[1] < 40L * 1048576, $"resident memory grew by {(resident[^1] - resident[1]) / 1048576} MiB from epoch 2 to 20");
        result.Network.Dispose();

        using var cancel = new CancellationTokenSource();
        var cancelled = new Trainer(new TrainingOptions { Architecture = "resnet8", K = 2, Epochs = 5, BatchSize = 32, Seed = 1 });
        cancelled.BatchCompleted += p => { if (p.Epoch == 2) cancel.Cancel(); };
        Assert.ThrowsExactly<OperationCanceledException>(() => cancelled.Train(train, val, cancellation: cancel.Token));
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Assert.IsTrue(LiveTensors() - before <= 2, $"a cancelled run left {LiveTensors() - before} tensors alive");
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void KillingARunMidSaveNeverLeavesATornCheckpoint()
    {
        var dir = TestSupport.NewTempFolder();
        var random = new Random(7);
        try
        {
            var args = new[]
            {
                "train", "--data", TestSupport.BundledSample, "--train-limit", "64", "--val-split", "32", "--arch", "resnet8", "--k", "2",
                "--rule", "dgl", "--man", "--epochs", "400", "--batch-size", "32", "--checkpoint-every", "1", "--out", dir,
            };
            int kills = 0, loaded = 0;
            var path = Path.Combine(dir, "run.ckpt");
            for (int attempt = 0; attempt < 6; attempt++)
            {
                var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                info.ArgumentList.Add(TestSupport.ManmlDll);
                foreach (var a in args) info.ArgumentList.Add(a);
                using var process = Process.Start(info)!;
                _ = process.StandardOutput.ReadToEndAsync();
                _ = process.StandardError.ReadToEndAsync();
                // Wait for checkpoints to be written, then kill at a random moment (often inside a save).
                var clock = Stopwatch.StartNew();
                while (!File.Exists(path) && clock.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(20);
                Thread.Sleep(random.Next(50, 1500));
                process.Kill(entireProcessTree: true);
                process.WaitForExit();
                kills++;
                var header = TrainingCheckpoint.ReadHeader(path);     // throws on a torn file
                Assert.IsTrue(header.EpochsCompleted >= 1);
                var options = new TrainingOptions { Architecture = "resnet8", K = 2, Epochs = 400, BatchSize = 32, Seed = 0,
                    Man = new Local.MomentumOptions() };
                var trainer = new Trainer(options);
                using var local = trainer.CreateLocalTrainer(10, 32);
                TrainingCheckpoint.Restore(path, trainer.Plan!, local);    // and the whole state loads
                local.Network.Dispose();
                loaded++;
                File.Delete(path);
            }
            Assert.AreEqual(kills, loaded);
        }
        finally { Directory.Delete(dir, true); }
    }
}
