// Issue 26 (options and files): counts out of range are refused by name, an output folder belongs to one run at a time,
// a failed run takes back what it created, writes are reported under the user's file name, and the free-space check
// is the files' real size.
using System.Text;
using Man.ML.MLNet;
using Man.ML.Training;
using Microsoft.ML;

namespace Man.ML.Tests;

[TestClass]
public sealed class OptionsAndFilesTests
{
    public TestContext TestContext { get; set; } = null!;

    // A user mistake: exit code 2, one line on stderr holding each of the expected parts, no stack trace.
    private static void AssertMistake(TestSupport.ProcessResult r, params string[] expected)
    {
        Assert.AreEqual(2, r.ExitCode, r.Stdout + r.Stderr);
        foreach (var part in expected) StringAssert.Contains(r.Stderr, part);
        Assert.AreEqual(1, r.Stderr.Trim().Split('\n').Length, "one line of error:\n" + r.Stderr);
        Assert.IsFalse(r.Stderr.Contains("   at "), "a user mistake must not print a stack trace:\n" + r.Stderr);
    }

    // A one-epoch ResNet-8 on 64 images; "--batch-size" among the extra options replaces the 32.
    private static string[] TinyTrain(string outDir, params string[] more) => new[]
    {
        "train", "--data", TestSupport.BundledSample, "--train-limit", "64", "--val-split", "32", "--arch", "resnet8", "--k", "2",
        "--rule", "dgl", "--epochs", "1", "--no-backend-check", "--out", outDir,
    }.Concat(more.Contains("--batch-size") ? more : more.Concat(new[] { "--batch-size", "32" })).ToArray();

    [TestMethod]
    public void ThreadCountsOutOfRangeAreRefusedNamingTheOption()
    {
        int max = TrainingOptions.MaxThreads;
        Assert.AreEqual(Math.Max(64, 4 * Environment.ProcessorCount), max);
        using var dir = new TestSupport.TempDir();
        var outDir = Path.Combine(dir.Path, "run");
        AssertMistake(TestSupport.RunManml(TinyTrain(outDir, "--threads", "100000")), "--threads", $"1 to {max}", "100000");
        AssertMistake(TestSupport.RunManml(TinyTrain(outDir, "--threads", "0")), "--threads", "got 0");
        AssertMistake(TestSupport.RunManml(TinyTrain(outDir, "--workers", "100000")), "--workers", $"to {max}", "100000");
        Assert.IsFalse(Directory.Exists(outDir), "an option refused before the run must not create --out");

        var e = Assert.ThrowsExactly<InvalidOptionException>(() => new TrainingOptions { DataWorkers = max + 1 }.Validate());
        Assert.AreEqual(nameof(TrainingOptions.DataWorkers), e.Option);
        new TrainingOptions { DataWorkers = max }.Validate();
    }

    private sealed class PixelRow
    {
        [Microsoft.ML.Data.VectorType(3072)] public float[] Pixels { get; set; } = Array.Empty<float>();
        public uint Label { get; set; }
    }

    [TestMethod]
    public void ABatchLargerThanTheTrainingImagesIsRefusedInTheLibraryMlNetAndTheCli()
    {
        using var images = TestSupport.SampleImages(0, 64);
        var trainer = new Trainer(new TrainingOptions { Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 100 });
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => trainer.Train(images, null));
        Assert.AreEqual(nameof(TrainingOptions.BatchSize), e.Option);
        StringAssert.Contains(e.Message, "100");
        StringAssert.Contains(e.Message, "64 training images");

        var mlContext = new MLContext(0);
        var pixels = images.Images.to_type(TorchSharp.torch.ScalarType.Float32).reshape(64, 3072).data<float>().ToArray();
        var labels = images.Labels.data<long>().ToArray();
        var rows = Enumerable.Range(0, 64).Select(i => new PixelRow { Pixels = pixels[(i * 3072)..((i + 1) * 3072)], Label = (uint)labels[i] }).ToList();
        var data = mlContext.Transforms.Conversion.MapValueToKey("Label").Fit(mlContext.Data.LoadFromEnumerable(rows))
            .Transform(mlContext.Data.LoadFromEnumerable(rows));
        var estimator = mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
        {
            ImageColumnName = "Pixels", Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 100,
        });
        var m = Assert.ThrowsExactly<InvalidOptionException>(() => estimator.Fit(data));
        Assert.AreEqual(nameof(ManImageClassificationTrainer.Options.BatchSize), m.Option);
        StringAssert.Contains(m.Message, "64 training rows");

        // The CLI (here, a run that had created its folder: see AFailedRunRemovesWhatItCreated... for what is left).
        using var dir = new TestSupport.TempDir();
        AssertMistake(TestSupport.RunManml(TinyTrain(Path.Combine(dir.Path, "run"), "--batch-size", "100000")),
            "--batch-size 100000", "64 training images");
        // The ML.NET sample names the command's option too.
        var sample = Path.Combine(dir.Path, "image-folder");
        AssertMistake(TestSupport.RunManml(new[] { "image-folder", "--images", ImageFolderFixture.Root, "--batch-size", "5000", "--out", sample }),
            "--batch-size: BatchSize 5000 is larger than the 1000 training rows");
        Assert.IsFalse(Directory.Exists(sample));
    }

    [TestMethod]
    public void AScoringBatchOfZeroIsRefusedNamingIt()
    {
        var options = new ManImageClassificationTrainer.Options { ScoringBatchSize = 0 };
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => new MLContext(0).MulticlassClassification.Trainers.ManImageClassification(options));
        Assert.AreEqual(nameof(ManImageClassificationTrainer.Options.ScoringBatchSize), e.Option);

        // Refused before the file is read: the path does not even exist.
        var a = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ManImageClassificationTransformer.FromCheckpoint("no-such.ckpt", scoringBatchSize: 0));
        Assert.AreEqual("scoringBatchSize", a.ParamName);

        AssertMistake(TestSupport.RunLab(new[] { "scoring-throughput", "--batch-size", "0", "--images", "8" }), "--batch-size", "got 0");
    }

    [TestMethod]
    public void AnOutputFolderInUseByAnotherRunIsRefusedNamingTheFolderAndThePid()
    {
        using var dir = new TestSupport.TempDir();
        var outDir = Path.Combine(dir.Path, "run");
        using (var held = OutputFolder.Acquire(outDir, "--out", "the test holding the folder"))
        {
            Assert.IsTrue(held.Created);
            // In this process too: the lock is per open file, not per process.
            var inProcess = Assert.ThrowsExactly<IOException>(() => OutputFolder.Acquire(outDir, "--out", "a second holder"));
            StringAssert.Contains(inProcess.Message, $"PID {Environment.ProcessId}: the test holding the folder");

            var r = TestSupport.RunManml(TinyTrain(outDir, "--checkpoint-every", "1"));
            AssertMistake(r, $"--out '{outDir}' is in use by another run", $"PID {Environment.ProcessId}");
            CollectionAssert.AreEquivalent(new[] { OutputFolder.LockFileName },
                Directory.GetFileSystemEntries(outDir).Select(Path.GetFileName).ToArray(), "the refused run wrote nothing there");

            // The analyses write into an output folder too.
            var model = SaveTinyModel(dir.Path);
            var features = new[]
            {
                "analyse", "features", "--model", model, "--data", TestSupport.BundledSample, "--image", "0", "--unit", "1", "--out", outDir,
            };
            AssertMistake(TestSupport.RunManml(features), "is in use by another run", $"PID {Environment.ProcessId}");
        }
        // Released: the folder can be held again (the lock file stays; its content is the new holder's).
        using (OutputFolder.Acquire(outDir, "--out", "next")) { }
    }

    [TestMethod]
    public void LockingAFolderDeletesTheTemporaryFilesOfKilledWritesOnly()
    {
        using var dir = new TestSupport.TempDir();
        // A dead process's temporary file (PIDs are below 2^22 on Linux), this process's own, and one of a running process.
        var dead = Path.Combine(dir.Path, ".run.ckpt.2147483646.tmp");
        var own = Path.Combine(dir.Path, $".model.ckpt.{Environment.ProcessId}.tmp");
        using var other = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("sleep", "30") { UseShellExecute = false })!;
        var alive = Path.Combine(dir.Path, $".metrics.json.{other.Id}.tmp");
        var unrelated = Path.Combine(dir.Path, ".notes.tmp");
        foreach (var f in new[] { dead, own, alive, unrelated }) File.WriteAllText(f, "partial");
        try
        {
            using (var folder = OutputFolder.Acquire(dir.Path, "--out", "test"))
                CollectionAssert.AreEquivalent(new[] { Path.GetFileName(dead), Path.GetFileName(own) }, folder.DeletedTemporaries.ToArray());
            Assert.IsFalse(File.Exists(dead) || File.Exists(own));
            Assert.IsTrue(File.Exists(alive) && File.Exists(unrelated), "another process's write and files of other names stay");
        }
        finally
        {
            other.Kill();
            other.WaitForExit();
        }

        // The CLI does it too, even in a run that then fails.
        File.WriteAllText(dead, "partial");
        AssertMistake(TestSupport.RunManml(TinyTrain(dir.Path, "--batch-size", "100000")), "--batch-size");
        Assert.IsFalse(File.Exists(dead));
    }

    [TestMethod]
    public void AFailedRunRemovesWhatItCreatedAndNothingElse()
    {
        using var dir = new TestSupport.TempDir();
        var fresh = Path.Combine(dir.Path, "runs", "fresh");
        AssertMistake(TestSupport.RunManml(TinyTrain(fresh, "--checkpoint-every", "1", "--batch-size", "100000")), "--batch-size");
        Assert.IsFalse(Directory.Exists(Path.Combine(dir.Path, "runs")), "a failed run removes the folders it created");

        // A folder the user had, holding an earlier run's files: they stay, and nothing of the failed run is left.
        var earlier = Path.Combine(dir.Path, "earlier");
        Directory.CreateDirectory(earlier);
        File.WriteAllText(Path.Combine(earlier, "model.ckpt"), "an earlier model");
        AssertMistake(TestSupport.RunManml(TinyTrain(earlier, "--checkpoint-every", "1", "--batch-size", "100000")), "--batch-size");
        CollectionAssert.AreEquivalent(new[] { "model.ckpt" }, Directory.GetFileSystemEntries(earlier).Select(Path.GetFileName).ToArray());
        Assert.AreEqual("an earlier model", File.ReadAllText(Path.Combine(earlier, "model.ckpt")));
    }

    [TestMethod]
    public void AWriteErrorNamesTheFileAskedForNotTheTemporaryOne()
    {
        using var dir = new TestSupport.TempDir();
        // A full disk, as .NET reports it (ENOSPC names the file being written: the temporary one).
        var target = Path.Combine(dir.Path, "model.ckpt");
        File.WriteAllText(target, "the previous model");
        var full = Assert.ThrowsExactly<IOException>(() => AtomicFile.Write(target, s =>
            throw new IOException($"No space left on device : '{((FileStream)s).Name}'")));
        Assert.AreEqual($"Could not write '{target}': No space left on device.", full.Message);
        Assert.AreEqual("the previous model", File.ReadAllText(target), "the previous file survives");
        CollectionAssert.AreEquivalent(new[] { "model.ckpt" }, Directory.GetFiles(dir.Path).Select(Path.GetFileName).ToArray(), "no temporary file left");

        // A folder that cannot be made (its parent is a file): works as root too, where permissions would not stop a write.
        var blocker = Path.Combine(dir.Path, "a-file");
        File.WriteAllText(blocker, "");
        var inside = Path.Combine(blocker, "model.onnx");
        var e = Assert.ThrowsExactly<IOException>(() => AtomicFile.WriteText(inside, "x"));
        Assert.AreEqual($"Could not write '{inside}': '{blocker}' is a file, not a folder.", e.Message);

        var model = SaveTinyModel(dir.Path);
        AssertMistake(TestSupport.RunManml(new[] { "export", "onnx", "--model", model, "--out", inside }), $"Could not write '{inside}'", "is a file");
    }

    // A fresh ResNet-8 as manml train's model.ckpt.
    private static string SaveTinyModel(string folder)
    {
        var path = Path.Combine(folder, "tiny.ckpt");
        using var network = Models.Architectures.Create("resnet8", 10, 32);
        ModelCheckpoint.Save(path, network, new CheckpointInfo
        {
            Architecture = "resnet8", Classes = 10, ImageSize = 32, ClassNames = Enumerable.Range(0, 10).Select(i => $"c{i}").ToArray(),
            NormalizationMean = Data.Normalization.Cifar.Mean, NormalizationStd = Data.Normalization.Cifar.Std, TrainedWith = "test",
            ImageRecipe = Data.ImageRecipe.Cifar,
        });
        return path;
    }

    [TestMethod]
    public void ExportsCreateAMissingOutputFolderAsTrainDoes()
    {
        using var dir = new TestSupport.TempDir();
        var model = SaveTinyModel(dir.Path);
        var onnx = Path.Combine(dir.Path, "new", "deeper", "model.onnx");
        var r = TestSupport.RunManml(new[] { "export", "onnx", "--model", model, "--out", onnx });
        Assert.AreEqual(0, r.ExitCode, r.Stderr);
        Assert.IsTrue(new FileInfo(onnx).Length > 0);
        var weights = Path.Combine(dir.Path, "other", "weights.safetensors");
        r = TestSupport.RunManml(new[] { "export", "weights", "--model", model, "--out", weights });
        Assert.AreEqual(0, r.ExitCode, r.Stderr);
        Assert.IsTrue(new FileInfo(weights).Length > 0);
    }

    [TestMethod]
    public void TheFreeSpaceEstimateIsTheFilesRealSize()
    {
        using var dir = new TestSupport.TempDir();
        using var train = TestSupport.SampleImages(0, 64);
        var options = new TrainingOptions { Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 32, Seed = 1, Man = new Local.MomentumOptions() };
        var checkpoint = Path.Combine(dir.Path, "run.ckpt");
        var result = new Trainer(options) { CheckpointPath = checkpoint, CheckBackend = false }.Train(train, null);
        var model = Path.Combine(dir.Path, "model.ckpt");
        ModelCheckpoint.Save(model, result.Network, new CheckpointInfo
        {
            Architecture = "resnet8", Classes = 10, ImageSize = 32, ClassNames = train.ClassNames.ToArray(),
            NormalizationMean = options.Normalization.Mean, NormalizationStd = options.Normalization.Std, TrainedWith = "test",
        });
        long modelEstimate = OutputSpace.ModelFileBytes(result.Network);
        result.Network.Dispose();

        var fresh = new Trainer(options);
        using var local = fresh.CreateLocalTrainer(10, 32);
        long runEstimate = OutputSpace.RunCheckpointBytes(fresh.Plan!, local);
        local.Network.Dispose();
        long runActual = new FileInfo(checkpoint).Length, modelActual = new FileInfo(model).Length;
        long oldEstimate = result.Plan.BackboneParameters * sizeof(float) * 8 + (16L << 20); // the check this replaces
        TestContext.WriteLine($"run.ckpt {runActual:N0} bytes, estimated {runEstimate:N0}; model.ckpt {modelActual:N0}, estimated {modelEstimate:N0} " +
                              $"(+ header); the former estimate {oldEstimate:N0} for both, {oldEstimate / (double)(runActual + modelActual):0.0}x");
        // Within a few KiB of the files (the headers grow with the epochs' figures; the momentum records are counted a
        // little generously), and the slack added for headers covers the rest.
        Assert.IsTrue(Math.Abs(runActual - runEstimate) < 16 << 10, $"run.ckpt {runActual} against {runEstimate}");
        Assert.IsTrue(Math.Abs(modelActual - modelEstimate) < 16 << 10, $"model.ckpt {modelActual} against {modelEstimate}");
        Assert.IsTrue(runActual < runEstimate + OutputSpace.HeaderSlackBytes && modelActual < modelEstimate + OutputSpace.HeaderSlackBytes);

        // The check itself: a folder not made yet is measured on its parent's disk; too little room names the folder.
        var later = Path.Combine(dir.Path, "not", "yet");
        OutputSpace.Ensure(later, runEstimate, "a run checkpoint");
        var e = Assert.ThrowsExactly<IOException>(() => OutputSpace.Ensure(later, 1L << 60, "a run checkpoint"));
        StringAssert.StartsWith(e.Message, $"'{later}' has ");
        StringAssert.Contains(e.Message, "MiB free; this run's files need about 1099511627776 MiB (a run checkpoint)");
    }

    // Whether signal number n is ignored by this process (/proc/self/status's SigIgn mask; false where there is none).
    private static bool SignalIgnoredHere(int n) =>
        File.Exists("/proc/self/status")
        && File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal)) is { } line
        && (Convert.ToUInt64(line["SigIgn:".Length..].Trim(), 16) & (1UL << (n - 1))) != 0;

    [TestMethod]
    [TestCategory("Slow")] // child-process trainings
    public void AnInterruptedOrTerminatedRunExitsWithTheCodesTheReadmeLists()
    {
        foreach (var (signal, code) in new[] { ("INT", 130), ("TERM", 143) })
        {
            // A test run started in the background by a non-interactive shell ignores SIGINT, and its children inherit
            // that (POSIX: nohup and background jobs rely on it), so the child never sees the signal: nothing to test.
            if (signal == "INT" && SignalIgnoredHere(2))
            {
                TestContext.WriteLine("SIGINT is ignored in this test process (started in the background?), and so in its children: " +
                                      "INT not tested");
                continue;
            }
            using var dir = new TestSupport.TempDir();
            var run = Path.Combine(dir.Path, "run");
            var info = new System.Diagnostics.ProcessStartInfo("dotnet")
            {
                RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
            };
            foreach (var a in new[] { TestSupport.ManmlDll, "train", "--arch", "resnet8", "--k", "2", "--epochs", "50", "--no-backend-check", "--out", run })
                info.ArgumentList.Add(a);
            using var process = System.Diagnostics.Process.Start(info)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            // Training has begun once the run holds its folder's lock.
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (!File.Exists(Path.Combine(run, ".manml.lock")) && clock.Elapsed < TimeSpan.FromSeconds(60) && !process.HasExited) Thread.Sleep(100);
            Thread.Sleep(1000);
            Assert.IsFalse(process.HasExited, $"the run ended before the signal: {stderr.Result}");
            using (var kill = System.Diagnostics.Process.Start("kill", new[] { "-" + signal, process.Id.ToString() })) kill.WaitForExit();
            if (!process.WaitForExit(60_000))
            {
                process.Kill(entireProcessTree: true);
                Assert.Fail($"SIG{signal} did not stop the run within a minute");
            }
            Assert.AreEqual(code, process.ExitCode, $"SIG{signal}: {stderr.Result}");
            Assert.IsFalse(stderr.Result.Contains("   at ", StringComparison.Ordinal), stderr.Result);
            _ = stdout.Result;
        }
    }
}
