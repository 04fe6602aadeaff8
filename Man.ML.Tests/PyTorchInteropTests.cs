using System.Text.Json;
using Man.ML.Interop;
using Man.ML.Local;
using Man.ML.MLNet;
using Man.ML.Models;
using Man.ML.Samples.Tooling;
using Man.ML.Training;
using static TorchSharp.torch;

namespace Man.ML.Tests;

/// <summary>
/// PyTorch state dicts in and out, checked against files and values PyTorch wrote (Golden/, made by
/// scripts/pytorch_interop.py; docs/INTEROP.md): torchvision's keys and shapes for every ImageNet architecture, a CIFAR
/// ResNet-8 written by torch.save and as safetensors with PyTorch's logits on the probe batch, and the golden logits,
/// loss and gradient norms of ResNet-18, ResNet-50 and ResNet-32 on weights regenerated from a seed.
/// </summary>
[TestClass]
public sealed class PyTorchInteropTests
{
    private static string Golden(string name) => Path.Combine(AppContext.BaseDirectory, "Golden", name);

    [TestMethod]
    public void EveryImageNetArchitectureHasTorchvisionsKeysAndShapes()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Golden("torchvision_keys.json")));
        foreach (var model in doc.RootElement.GetProperty("models").EnumerateObject())
        {
            var expected = model.Value.EnumerateArray().ToDictionary(e => e[0].GetString()!,
                e => string.Join(",", e[1].EnumerateArray().Select(d => d.GetInt64())));
            using var network = Architectures.Create(model.Name, 1000, 64);
            var actual = PyTorchWeights.KeysOf(network).Zip(network.state_dict().Values.Select(t => string.Join(",", t.shape)))
                .ToDictionary(p => p.First, p => p.Second);
            foreach (var (key, shape) in expected)
            {
                Assert.IsTrue(actual.TryGetValue(key, out var ours), $"{model.Name}: Man.ML has no tensor '{key}' ({shape})");
                Assert.AreEqual(shape, ours, $"{model.Name}: '{key}' has shape ({ours}), torchvision's is ({shape})");
            }
            Assert.AreEqual(expected.Count, actual.Count,
                $"{model.Name}: Man.ML has tensors torchvision lacks: {string.Join(", ", actual.Keys.Except(expected.Keys).Take(3))}");
        }
    }

    [TestMethod]
    [DataRow("resnet8_c100.pt")]
    [DataRow("resnet8_c100.safetensors")]
    public void AFileWrittenByPyTorchGivesPyTorchsLogits(string file)
    {
        using var network = new CifarResNet(8, 100);
        var report = PyTorchWeights.Load(network, Golden(file));
        Assert.AreEqual(56, report.TensorsLoaded);
        Assert.IsFalse(report.HeadReplaced);
        using var doc = JsonDocument.Parse(File.ReadAllText(Golden("resnet8_c100.logits.json")));
        var expected = doc.RootElement.GetProperty("logits").EnumerateArray().Select(r => r.EnumerateArray().Select(v => v.GetDouble()).ToArray()).ToArray();
        network.eval();
        using var noGrad = no_grad();
        var (images, _) = ProbeBatch.Create(32, 100);
        using var logits = network.call(images).to_type(ScalarType.Float64);
        using var reference = tensor(expected.SelectMany(r => r).ToArray(), new long[] { expected.Length, 100 });
        double logitError = (logits - reference).abs().max().item<double>();
        double probabilityError = (logits.softmax(1) - reference.softmax(1)).abs().max().item<double>();
        Assert.IsTrue(logitError < 1e-4, $"largest logit difference from PyTorch's {logitError:E2}");
        Assert.IsTrue(probabilityError < 1e-5, $"largest probability difference from PyTorch's {probabilityError:E2}");
        Assert.IsTrue(logits.argmax(1).equal(reference.argmax(1)).all().item<bool>(), "top-1 differs from PyTorch's");
        images.Dispose();
    }

    [TestMethod]
    [DataRow("resnet8", ".pt")]
    [DataRow("resnet8", ".safetensors")]
    [DataRow("resnext50_32x4d", ".safetensors")]
    public void SavedWeightsLoadBackTensorForTensor(string arch, string extension)
    {
        var path = Path.Combine(TestSupport.NewTempFolder(), "weights" + extension);
        manual_seed(1);
        using var a = Architectures.Create(arch, 10, 64);
        SyntheticWeights.Fill(a, 7);
        PyTorchWeights.Save(a, path);
        manual_seed(2);
        using var b = Architectures.Create(arch, 10, 64);
        var report = PyTorchWeights.Load(b, path);
        Assert.AreEqual(a.state_dict().Count, report.TensorsLoaded);
        Assert.AreEqual(extension == ".safetensors" ? WeightsFormat.Safetensors : WeightsFormat.PyTorch, report.Format);
        foreach (var ((key, x), (_, y)) in a.state_dict().Zip(b.state_dict()))
            Assert.IsTrue(x.equal(y).all().item<bool>(), $"{key} differs after a save and a load");
        Assert.IsFalse(Directory.EnumerateFiles(Path.GetDirectoryName(path)!, "*.tmp").Any(), "a temporary file was left behind");
    }

    [TestMethod]
    public void AFileThatDoesNotFitNamesTheFirstKeyAtFault()
    {
        var dir = TestSupport.NewTempFolder();
        using var resnet8 = new CifarResNet(8, 10);
        using var resnet14 = new CifarResNet(14, 10);
        using var other = new CifarResNet(8, 7);
        string small = Path.Combine(dir, "r8.pt"), large = Path.Combine(dir, "r14.pt"), sevenClasses = Path.Combine(dir, "c7.safetensors");
        PyTorchWeights.Save(resnet8, small);
        PyTorchWeights.Save(resnet14, large);
        PyTorchWeights.Save(other, sevenClasses);

        var missing = Assert.ThrowsExactly<IncompatibleWeightsException>(() => PyTorchWeights.Load(resnet14, small));
        StringAssert.Contains(missing.Message, "'r8.pt' has no key 'layer1.1.conv1.weight' (16, 16, 3, 3), which resnet14 needs");
        var unexpected = Assert.ThrowsExactly<IncompatibleWeightsException>(() => PyTorchWeights.Load(resnet8, large));
        StringAssert.Contains(unexpected.Message, "key 'layer1.1.bn1.bias' (and 35 more) is not a tensor of resnet8");
        var shape = Assert.ThrowsExactly<IncompatibleWeightsException>(() => PyTorchWeights.Load(resnet8, sevenClasses));
        StringAssert.Contains(shape.Message, "key 'fc.weight' has shape (7, 64), resnet8 needs (10, 64) (a classifier for another class count");
        var replaced = PyTorchWeights.Load(resnet8, sevenClasses, replaceClassifierOnClassMismatch: true);
        Assert.IsTrue(replaced.HeadReplaced);
        Assert.AreEqual(resnet8.state_dict().Count - 2, replaced.TensorsLoaded);

        var text = Path.Combine(dir, "notes.pt");
        File.WriteAllText(text, "not weights");
        var garbage = Assert.ThrowsExactly<IncompatibleWeightsException>(() => PyTorchWeights.Load(resnet8, text));
        StringAssert.Contains(garbage.Message, "'notes.pt' is neither a torch.save zip file nor safetensors");
        var truncated = Path.Combine(dir, "cut.pt");
        File.WriteAllBytes(truncated, File.ReadAllBytes(small)[..4000]);
        var cut = Assert.ThrowsExactly<IncompatibleWeightsException>(() => PyTorchWeights.Load(resnet8, truncated));
        StringAssert.Contains(cut.Message, "'cut.pt' could not be read as a torch.save state dict");
        Assert.ThrowsExactly<FileNotFoundException>(() => PyTorchWeights.Load(resnet8, Path.Combine(dir, "absent.pt")));
    }

    [TestMethod]
    public void FineTuningStartsFromThePyTorchFileReplacesTheClassifierAndCopiesTheLoadedNextUnitIntoMan()
    {
        // The PyTorch-written ResNet-8 has a 100-class classifier; the run has 10 classes.
        var options = new TrainingOptions
        {
            Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 32, Seed = 3, InitFrom = Golden("resnet8_c100.pt"),
            Man = new MomentumOptions { Initialization = ManInitialization.Next },
        };
        using var file = new CifarResNet(8, 100);
        PyTorchWeights.Load(file, Golden("resnet8_c100.pt"));
        var trainer = new Trainer(options);
        var plan = trainer.Prepare(10, 32);
        Assert.IsTrue(plan.InitialWeights!.HeadReplaced);
        Assert.AreEqual("replaced", plan.ToJson()["init_classifier"]!.GetValue<string>());
        var prepared = trainer.PreparedNetwork!;
        foreach (var ((key, loaded), (_, original)) in prepared.state_dict().Zip(file.state_dict()))
            if (!key.StartsWith("head.", StringComparison.Ordinal))
                Assert.IsTrue(loaded.equal(original).all().item<bool>(), $"{key} was not loaded from the file");
        using var local = trainer.CreateLocalTrainer(10, 32);
        int next = local.Split.NextUnit(0);
        // Next copies the parameters (the copy's batch norm runs in training mode and keeps its own statistics).
        var copy = local.Man![0].Learnable!.parameters().ToList();
        var unit = local.Network.Units[next].parameters().ToList();
        Assert.AreEqual(unit.Count, copy.Count);
        for (int i = 0; i < unit.Count; i++)
            Assert.IsTrue(copy[i].equal(unit[i]).all().item<bool>(), $"MAN's copy of unit {next} differs from the loaded unit at parameter {i}");

        using var train = TestSupport.SampleImages(0, 96);
        using var val = TestSupport.SampleImages(0, 40);
        var result = new Trainer(options).Train(train, val);
        Assert.IsTrue(double.IsFinite(result.Epochs[^1].TrainLoss), "the fine-tuning run's loss is not finite");
        Assert.AreEqual(10, result.Network.ClassCount);
        result.Network.Dispose();
    }

    [TestMethod]
    public void InitFromNamesAMissingFileAsAnOption()
    {
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => new Trainer(new TrainingOptions { InitFrom = "/no/such/weights.pt" }));
        Assert.AreEqual(nameof(TrainingOptions.InitFrom), e.Option);
        StringAssert.Contains(e.Message, "'/no/such/weights.pt'");
    }

    [TestMethod]
    public void TheMLNetOptionsCarryInitFromIntoThePlan()
    {
        var mlContext = new Microsoft.ML.MLContext(0);
        var options = new MLNet.ManImageClassificationTrainer.Options { Architecture = "resnet8", K = 2, InitFrom = Golden("resnet8_c100.safetensors") };
        var trainer = mlContext.MulticlassClassification.Trainers.ManImageClassification(options);
        var plan = trainer.ResolvePlan(10);
        Assert.AreEqual(WeightsFormat.Safetensors, plan.InitialWeights!.Format);
        Assert.IsTrue(plan.InitialWeights.HeadReplaced, "a 100-class classifier was kept for 10 classes");
        Assert.AreEqual(54, plan.InitialWeights.TensorsLoaded);
        options.InitFrom = "/no/such.pt";
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(options));
        Assert.AreEqual("InitFrom", e.Option);
    }

    [TestMethod]
    public void TheCommandLineReportsAFileThatDoesNotFitInOneLine()
    {
        var dir = TestSupport.NewTempFolder();
        var r = TestSupport.RunManml(new[] { "export-weights", "--arch", "resnet14", "--init-from", Golden("resnet8_c100.pt"),
            "--out", Path.Combine(dir, "x.pt") });
        Assert.AreEqual(2, r.ExitCode, r.Stderr);
        StringAssert.Contains(r.Stderr, "'resnet8_c100.pt' has no key 'layer1.1.conv1.weight' (16, 16, 3, 3), which resnet14 needs");
        Assert.AreEqual(1, r.Stderr.Trim().Split('\n').Length, r.Stderr);
        Assert.IsFalse(File.Exists(Path.Combine(dir, "x.pt")), "an output was written for a failed export");
        var train = TestSupport.RunManml(new[] { "train", "--init-from", Path.Combine(dir, "absent.pt"), "--out", dir });
        Assert.AreEqual(2, train.ExitCode, train.Stderr);
        StringAssert.Contains(train.Stderr, "absent.pt' to initialise from does not exist");
    }

    [TestMethod]
    public void ExportWeightsAndExportOnnxWriteWhatTheyPromise()
    {
        var dir = TestSupport.NewTempFolder();
        string weights = Path.Combine(dir, "w.safetensors"), logitsPath = Path.Combine(dir, "logits.json");
        var r = TestSupport.RunManml(new[] { "export-weights", "--arch", "resnet8", "--classes", "100", "--init-from", Golden("resnet8_c100.pt"),
            "--out", weights, "--logits-out", logitsPath });
        Assert.AreEqual(0, r.ExitCode, r.Stderr);
        // The logits Man.ML wrote are PyTorch's (the file PyTorch wrote, re-exported as safetensors).
        using var ours = JsonDocument.Parse(File.ReadAllText(logitsPath));
        using var theirs = JsonDocument.Parse(File.ReadAllText(Golden("resnet8_c100.logits.json")));
        var a = ours.RootElement.GetProperty("logits").EnumerateArray().SelectMany(x => x.EnumerateArray()).Select(v => v.GetDouble()).ToArray();
        var b = theirs.RootElement.GetProperty("logits").EnumerateArray().SelectMany(x => x.EnumerateArray()).Select(v => v.GetDouble()).ToArray();
        Assert.IsTrue(a.Zip(b, (x, y) => Math.Abs(x - y)).Max() < 1e-4, "export-weights --logits-out differs from PyTorch's logits");
        using (var reloaded = new CifarResNet(8, 100)) Assert.AreEqual(56, PyTorchWeights.Load(reloaded, weights).TensorsLoaded);

        // A model.ckpt to ONNX, with its class names and recipe in the metadata.
        using var network = new CifarResNet(8, 3);
        var checkpoint = Path.Combine(dir, "model.ckpt");
        ModelCheckpoint.Save(checkpoint, network, new CheckpointInfo
        {
            Architecture = "resnet8", Classes = 3, ImageSize = 32, ClassNames = new[] { "cat", "dog", "owl" },
            NormalizationMean = Data.Normalization.Cifar.Mean, NormalizationStd = Data.Normalization.Cifar.Std,
        });
        var onnx = Path.Combine(dir, "model.onnx");
        var e = TestSupport.RunManml(new[] { "export-onnx", "--model", checkpoint, "--out", onnx });
        Assert.AreEqual(0, e.ExitCode, e.Stderr);
        using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(onnx);
        var metadata = session.ModelMetadata.CustomMetadataMap;
        Assert.AreEqual("[\"cat\",\"dog\",\"owl\"]", metadata[OnnxExport.ClassesKey]);
        Assert.AreEqual("cifar", metadata[OnnxExport.RecipeKey]);
        Assert.AreEqual(3, session.OutputMetadata[OnnxExport.OutputName].Dimensions[1]);
    }
}
