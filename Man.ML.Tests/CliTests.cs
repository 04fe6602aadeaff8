using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Man.ML.Local;
using Man.ML.Training;

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
    public void ACommandLineThatDoesNotParseIsOneLineAndExitCodeTwo()
    {
        foreach (var (args, expected) in new (string[] Args, string Expected)[]
        {
            (new[] { "train", "--lr", "fast" }, "--lr: 'fast' is not a number"),
            (new[] { "train", "--seed", "abc" }, "--seed: 'abc' is not a whole number"),
            (new[] { "train", "--epochs", "99999999999" }, "--epochs: '99999999999' is not a whole number from -2147483648 to 2147483647"),
            (new[] { "train", "--no-such-option" }, "'--no-such-option'"),
            (Array.Empty<string>(), "Required command was not provided"),
        })
        {
            var r = TestSupport.RunManml(args);
            Assert.AreEqual(2, r.ExitCode, string.Join(" ", args) + ": " + r.Stderr);
            AssertCleanFailure(r, expected);
            Assert.IsFalse(r.Stderr.Contains("System."), "a .NET type name reached the user: " + r.Stderr);
        }
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
    public void MisspeltChoicesListTheValidNames()
    {
        AssertCleanFailure(TestSupport.RunManml(new[] { "train", "--rule", "infopr", "--out", TestSupport.NewTempFolder() }),
            "--rule 'infopr' is not one of: e2e, dgl, infopro, predsim.");
        AssertCleanFailure(TestSupport.RunManml(new[] { "train", "--split", "mann", "--out", TestSupport.NewTempFolder() }),
            "--split 'mann' is not one of: man, manpp, infopro, dgl, balanced.");
        AssertCleanFailure(TestSupport.RunManml(new[] { "train", "--arch", "resnet33", "--out", TestSupport.NewTempFolder() }), "resnext50_32x4d");
        AssertCleanFailure(TestSupport.RunManml(new[] { "train", "--man-ablation", "ema", "--out", TestSupport.NewTempFolder() }),
            "none, ema-only, lb-only, param-copy");
    }

    private static string[] TinyRun(string outDir, string rule = "dgl", int epochs = 1) => new[]
    {
        "train", "--data", TestSupport.BundledSample, "--train-limit", "64", "--val-split", "32", "--arch", "resnet8", "--k", "2",
        "--rule", rule, "--man", "--epochs", epochs.ToString(), "--batch-size", "32", "--seed", "4", "--out", outDir,
    };

    [TestMethod]
    [TestCategory("Slow")]
    public void ARuleNamedInAnyCaseWritesTheSameConfigAndTheConfigIsTheRunPlan()
    {
        JsonObject? first = null;
        foreach (var name in new[] { "InfoPro", "infopro", "INFOPRO" })
        {
            var outDir = TestSupport.NewTempFolder();
            var r = TestSupport.RunManml(TinyRun(outDir, name).Append("--no-backend-check"));
            Assert.AreEqual(0, r.ExitCode, r.Stderr + r.Stdout);
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "metrics.json")))!["config"]!.AsObject();
            Assert.AreEqual("infopro", config["rule"]!.GetValue<string>(), name);
            Assert.IsNotNull(config["infopro"], $"--rule {name}: the InfoPro settings are missing from the config");
            config.Remove("out");
            if (first is null) first = config;
            else Assert.IsTrue(JsonNode.DeepEquals(first, config), $"--rule {name} wrote another config:\n{config}\nthan\n{first}");
            Directory.Delete(outDir, true);
        }
        // Apart from how this invocation found its data and where it wrote, metrics.json's config is the run's plan.
        var plan = RunPlan.Resolve(new TrainingOptions
        {
            Architecture = "resnet8", K = 2, Rule = LearningRule.InfoPro, Man = new MomentumOptions(), Epochs = 1, BatchSize = 32, Seed = 4,
        }, 10, 32).ToJson();
        foreach (var key in first!.Select(p => p.Key).Where(k => !plan.ContainsKey(k)).ToList()) first!.Remove(key);
        Assert.IsTrue(JsonNode.DeepEquals(plan, first), $"config\n{first}\nis not the plan\n{plan}");
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void ResumingWithTheOriginalOptionsContinuesAndADifferentOptionIsRefusedByName()
    {
        var outDir = TestSupport.NewTempFolder();
        var args = TinyRun(outDir, epochs: 6).Concat(new[] { "--checkpoint-every", "1" }).ToArray();
        var checkpoint = Path.Combine(outDir, "run.ckpt");
        // Start the run and stop it once a checkpoint holds an epoch (as a crash or a kill would).
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(TestSupport.ManmlDll);
        foreach (var a in args) info.ArgumentList.Add(a);
        int interruptedAt;
        using (var process = Process.Start(info)!)
        {
            _ = process.StandardOutput.ReadToEndAsync();
            _ = process.StandardError.ReadToEndAsync();
            var clock = Stopwatch.StartNew();
            while (!File.Exists(checkpoint) && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(120)) Thread.Sleep(10);
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            interruptedAt = TrainingCheckpoint.ReadHeader(checkpoint).EpochsCompleted;
        }
        Assert.IsTrue(interruptedAt >= 1);

        // The original command with --resume added: the options given now and the saved ones are the same run.
        var resumed = TestSupport.RunManml(args.Concat(new[] { "--resume", outDir }));
        Assert.AreEqual(0, resumed.ExitCode, resumed.Stderr + resumed.Stdout);
        var metrics = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "metrics.json")))!;
        Assert.AreEqual(6, metrics["epochs"]!.AsArray().Count, $"interrupted after {interruptedAt} epochs, resumed to the end");
        Assert.AreEqual(outDir, metrics["config"]!["resume"]!.GetValue<string>());

        // Only --resume: the saved options are used.
        AssertOk(TestSupport.RunManml(new[] { "train", "--resume", outDir }));
        // A different K is refused, naming the option.
        var refused = TestSupport.RunManml(args.Select(a => a == "2" ? "3" : a).Concat(new[] { "--resume", outDir }));
        AssertCleanFailure(refused, "k was 2 there and is 3 here");
        StringAssert.Contains(refused.Stderr, "(option --k)");
        Directory.Delete(outDir, true);
    }

    private static void AssertOk(TestSupport.ProcessResult r) => Assert.AreEqual(0, r.ExitCode, r.Stderr + r.Stdout);

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
    [TestCategory("Slow")]
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
        string[] configuration = { "--arch", "resnet8", "--k", "2", "--rule", "dgl", "--batch-size", "8", "--steps", "2", "--warmup", "1", "--lr", "1e30" };
        foreach (var (name, r) in new[]
        {
            ("manml measure memory", TestSupport.RunManml(new[] { "measure", "memory" }.Concat(configuration))),
            ("manml-lab measure-speed", TestSupport.RunLab(new[] { "measure-speed" }.Concat(configuration))),
        })
        {
            AssertCleanFailure(r, "is not finite");
            Assert.AreEqual(3, r.ExitCode, name);
        }
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void DoctorChecksEveryConvolutionOfAConfiguration()
    {
        var r = TestSupport.RunManml(new[] { "doctor", "--arch", "resnet8", "--k", "2", "--rule", "infopro", "--man" });
        Assert.AreEqual(0, r.ExitCode, r.Stdout + r.Stderr);
        foreach (var line in new[] { "CPU ", "oneDNN ISA", "libtorch / TorchSharp", "threads", "convolution workaround", "resnet8 K=2, rule infopro + MAN" })
            StringAssert.Contains(r.Stdout, line);
        StringAssert.Contains(r.Stdout, "12→3 3x3/1 p1 at 32x32");   // InfoPro's decoder
        StringAssert.Contains(r.Stdout, "PointwiseProduct");         // MAN's copy of layer2[0]'s strided projection, channels-last
        StringAssert.Contains(r.Stdout, "activation layout       channels-last");
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

    [TestMethod]
    public void TheHelpListsTheGroupedCommandsAndHidesTheOldNames()
    {
        var r = TestSupport.RunManml(new[] { "--help" });
        Assert.AreEqual(0, r.ExitCode, r.Stderr);
        var listed = r.Stdout.Split('\n').Select(l => l.TrimStart().Split(' ', ',')[0]).ToHashSet();
        foreach (var command in new[] { "train", "presets", "doctor", "image-folder", "score-model", "export", "measure", "analyse" })
            Assert.IsTrue(listed.Contains(command), $"'{command}' is not in manml --help:\n{r.Stdout}");
        foreach (var old in new[] { "export-onnx", "export-weights", "measure-memory", "measure-fit-memory", "probe", "bench", "profile" })
            Assert.IsFalse(listed.Contains(old), $"'{old}' is listed in manml --help:\n{r.Stdout}");
        var export = TestSupport.RunManml(new[] { "export", "--help" });
        foreach (var sub in new[] { "onnx", "weights" }) StringAssert.Contains(export.Stdout, sub);
        var analyse = TestSupport.RunManml(new[] { "analyse", "--help" });
        foreach (var sub in new[] { "probe", "cka", "features", "summarize", "plot" }) StringAssert.Contains(analyse.Stdout, sub);
    }

    [TestMethod]
    public void AnOldCommandNameRunsTheGroupedCommand()
    {
        var missing = Path.Combine(TestSupport.NewTempFolder(), "no-model.ckpt");
        foreach (var spelling in new[] { new[] { "export", "onnx" }, new[] { "export-onnx" }, new[] { "export", "weights" }, new[] { "export-weights" } })
            AssertCleanFailure(TestSupport.RunManml(spelling.Concat(new[] { "--model", missing, "--out", missing + ".out" })), missing);
        // The same mistake under the old and the new spelling: the same one-line message.
        var folder = TestSupport.NewTempFolder();
        foreach (var (old, grouped, args, expected) in new[]
        {
            ("measure-fit-memory", new[] { "measure", "fit-memory" }, new[] { "--images", folder, "--rows", "1" }, "--rows must be at least 2"),
            ("measure-memory", new[] { "measure", "memory" }, new[] { "--threads", "0" }, "--threads must be 1 to "),
            ("cka", new[] { "analyse", "cka" }, new[] { "--model", missing, "--reference", missing, "--images", "2", "--out", folder }, "--images 2"),
        })
        {
            var a = TestSupport.RunManml(new[] { old }.Concat(args));
            AssertCleanFailure(a, expected);
            Assert.AreEqual(TestSupport.RunManml(grouped.Concat(args)).Stderr, a.Stderr, old);
        }
        // An old name's help is the grouped command's.
        StringAssert.Contains(TestSupport.RunManml(new[] { "export-onnx", "--help" }).Stdout, "manml export onnx [options]");
    }

    [TestMethod]
    public void ALabCommandInManmlNamesWhereItMoved()
    {
        foreach (var name in new[] { "bench", "profile", "measure-speed", "scoring-throughput" })
        {
            var r = TestSupport.RunManml(new[] { name, "--out", "somewhere", "--batch-size", "8" });
            AssertCleanFailure(r, $"dotnet run --project Man.ML.Lab -c Release -- {name}");
            Assert.AreEqual(2, r.ExitCode, name);
        }
        var lab = TestSupport.RunLab(new[] { "--help" });
        Assert.AreEqual(0, lab.ExitCode, lab.Stderr);
        foreach (var name in new[] { "bench", "profile", "measure-speed", "measure-memory", "scoring-throughput" }) StringAssert.Contains(lab.Stdout, name);
    }

    [TestMethod]
    public void EverySharedOptionHasOneDefault()
    {
        // The options several commands share are declared once (CommonOptions): wherever one has a default, it is the same.
        var defaults = new Dictionary<string, HashSet<string>>();
        void Visit(System.CommandLine.Command command)
        {
            foreach (var option in command.Options.Where(o => o.HasDefaultValue))
            {
                if (!defaults.TryGetValue(option.Name, out var values)) defaults[option.Name] = values = new HashSet<string>();
                values.Add(Convert.ToString(option.GetDefaultValue(), System.Globalization.CultureInfo.InvariantCulture) ?? "null");
            }
            foreach (var sub in command.Subcommands) Visit(sub);
        }
        Visit(Man.ML.Samples.Cli.ManmlCommands.Create());
        foreach (var name in new[] { "--arch", "--k", "--rule", "--batch-size", "--seed", "--device" })
        {
            Assert.IsTrue(defaults.ContainsKey(name), name);
            Assert.AreEqual(1, defaults[name].Count, $"{name} has the defaults {string.Join(", ", defaults[name])}");
        }
    }
}
