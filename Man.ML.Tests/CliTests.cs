using System.Text.Json;

namespace Man.ML.Tests;

[TestClass]
public sealed class CliTests
{
    private static void AssertCleanFailure(TestSupport.ProcessResult r, string expected)
    {
        Assert.AreNotEqual(0, r.ExitCode);
        StringAssert.Contains(r.Stderr, expected);
        Assert.IsFalse(r.Stderr.Contains("   at ") || r.Stdout.Contains("   at "), "a user mistake must not print a stack trace:\n" + r.Stderr);
        Assert.AreEqual(1, r.Stderr.Trim().Split('\n').Length, "one line of error:\n" + r.Stderr);
    }

    [TestMethod]
    public void AnUnknownArchitectureIsOneClearMessage() =>
        AssertCleanFailure(TestSupport.RunManml(new[] { "train", "--arch", "resnet33", "--out", TestSupport.NewTempFolder() }), "resnet33");

    [TestMethod]
    public void ATooLargeKIsOneClearMessage() =>
        AssertCleanFailure(TestSupport.RunManml(new[] { "train", "--k", "17", "--out", TestSupport.NewTempFolder() }), "between 1 and 16");

    [TestMethod]
    public void AMissingDataFileIsOneClearMessage() =>
        AssertCleanFailure(TestSupport.RunManml(new[] { "train", "--data", "/no/such/file.bin", "--out", TestSupport.NewTempFolder() }), "/no/such/file.bin");

    [TestMethod]
    public void AnUnwritableOutputFolderIsReportedBeforeTraining()
    {
        var file = Path.Combine(TestSupport.NewTempFolder(), "a-file");
        File.WriteAllText(file, "");
        var r = TestSupport.RunManml(new[] { "train", "--out", Path.Combine(file, "run"), "--epochs", "1" });
        AssertCleanFailure(r, "is not a writable folder");
        Assert.IsFalse(r.Stdout.Contains("epoch 1"), "training started");
    }

    [TestMethod]
    public void TrainWritesCompleteMetricsAndACheckpoint()
    {
        var outDir = TestSupport.NewTempFolder();
        var r = TestSupport.RunManml(new[]
        {
            "train", "--data", TestSupport.BundledSample, "--train-limit", "96", "--val-split", "64", "--arch", "resnet8",
            "--k", "2", "--rule", "dgl", "--man", "--epochs", "2", "--batch-size", "32", "--seed", "3", "--test", TestSupport.BundledSample, "--out", outDir,
        });
        Assert.AreEqual(0, r.ExitCode, r.Stderr + r.Stdout);
        using var json = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "metrics.json")));
        var root = json.RootElement;
        var config = root.GetProperty("config");
        Assert.AreEqual(2, config.GetProperty("k").GetInt32());
        Assert.IsTrue(config.GetProperty("man").GetBoolean());
        Assert.AreEqual(96, config.GetProperty("train_images").GetInt32());
        Assert.AreEqual(64, config.GetProperty("val_images").GetInt32());
        var epochs = root.GetProperty("epochs");
        Assert.AreEqual(2, epochs.GetArrayLength());
        foreach (var key in new[] { "train_loss", "train_accuracy", "val_accuracy", "lr", "seconds" })
            Assert.AreEqual(JsonValueKind.Number, epochs[1].GetProperty(key).ValueKind, key);
        var final = root.GetProperty("final");
        foreach (var key in new[] { "val_accuracy", "train_seconds", "images_per_second", "parameters_backbone", "parameters_auxiliary" })
            Assert.AreEqual(JsonValueKind.Number, final.GetProperty(key).ValueKind, key);
        Assert.AreEqual(JsonValueKind.Number, final.GetProperty("test_accuracy").GetProperty("cifar10_sample.bin").ValueKind);
        Assert.AreEqual(epochs[1].GetProperty("val_accuracy").GetDouble(), final.GetProperty("val_accuracy").GetDouble());
        var backend = root.GetProperty("backend");
        Assert.IsTrue(backend.GetProperty("convolution_shapes_checked").GetInt32() > 3, "the backend check ran on the run's convolutions");
        Assert.AreEqual("auto", backend.GetProperty("conv_workaround").GetString());
        Assert.IsTrue(File.Exists(Path.Combine(outDir, "model.ckpt")));
        var (net, info) = Man.ML.Training.ModelCheckpoint.Load(Path.Combine(outDir, "model.ckpt"));
        Assert.AreEqual("resnet8", info.Architecture);
        Assert.AreEqual(final.GetProperty("parameters_backbone").GetInt64(), net.ParameterCount());
        Directory.Delete(outDir, true);
    }

    [TestMethod]
    public void MeasureCommandsReportANonFiniteStepInOneLine()
    {
        // A learning rate of 1e30 makes the second step's loss infinite on every machine.
        foreach (var command in new[] { "measure-speed", "measure-memory" })
        {
            var r = TestSupport.RunManml(new[] { command, "--arch", "resnet8", "--k", "2", "--rule", "dgl", "--batch-size", "8", "--steps", "2", "--warmup", "1", "--lr", "1e30" });
            AssertCleanFailure(r, "is not finite");
            Assert.AreEqual(3, r.ExitCode, command);
        }
    }

    [TestMethod]
    public void DoctorChecksEveryConvolutionOfAConfiguration()
    {
        var r = TestSupport.RunManml(new[] { "doctor", "--arch", "resnet8", "--k", "2", "--rule", "infopro", "--man" });
        Assert.AreEqual(0, r.ExitCode, r.Stdout + r.Stderr);
        foreach (var line in new[] { "CPU ", "oneDNN ISA", "libtorch / TorchSharp", "threads", "convolution workaround", "resnet8 K=2, rule infopro + MAN" })
            StringAssert.Contains(r.Stdout, line);
        StringAssert.Contains(r.Stdout, "12→3 3x3/1 p1 at 32x32");   // InfoPro's decoder
        StringAssert.Contains(r.Stdout, "SubsampledInput");          // MAN's copy of layer2[0]'s strided projection
        StringAssert.Matches(r.Stdout, new System.Text.RegularExpressions.Regex(@"all \d+ shapes correct"));
        // Each shape in its own child process: the same verdicts.
        var isolated = TestSupport.RunManml(new[] { "doctor", "--arch", "resnet8", "--k", "2", "--rule", "dgl", "--isolate" });
        Assert.AreEqual(0, isolated.ExitCode, isolated.Stdout + isolated.Stderr);
        StringAssert.Contains(isolated.Stdout, "each checked in a child process");
        StringAssert.Matches(isolated.Stdout, new System.Text.RegularExpressions.Regex(@"all \d+ shapes correct"));
    }

    [TestMethod]
    public void AnUnknownConvolutionWorkaroundIsOneClearMessage()
    {
        AssertCleanFailure(TestSupport.RunManml(new[] { "doctor", "--conv-workaround", "sometimes" }), "auto, always, never");
        AssertCleanFailure(TestSupport.RunManml(new[] { "doctor" }, new Dictionary<string, string> { ["MANML_CONV_WORKAROUND"] = "sometimes" }),
            "MANML_CONV_WORKAROUND");
    }
}
