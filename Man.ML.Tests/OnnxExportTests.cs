using System.Text.Json;
using Man.ML.Data;
using Man.ML.Interop;
using Man.ML.Local;
using Man.ML.MLNet;
using Man.ML.Models;
using Man.ML.Samples.MLNet;
using Man.ML.Samples.Tooling;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

/// <summary>
/// ONNX export: every architecture family's graph, run by ONNX Runtime, gives Man.ML's probabilities; and a model
/// trained through ML.NET, exported with SaveAsOnnx and scored by the TorchSharp-free sample (manml-onnx-score: ML.NET's
/// ApplyOnnxModel after the shared preprocessing) in a child process, gives the transformer's top-1 on every validation
/// image and probabilities within 1e-4.
/// </summary>
[TestClass]
public sealed class OnnxExportTests
{
    [TestMethod]
    [DataRow("resnet8", 32)]           // CIFAR stem, BasicBlocks, projections
    [DataRow("resnet18", 64)]          // ImageNet stem with max-pool, BasicBlocks
    [DataRow("resnet50", 64)]          // Bottlenecks
    [DataRow("resnext50_32x4d", 64)]   // grouped 3x3 convolutions
    public void OnnxRuntimeGivesManMlsProbabilities(string arch, int size) => CompareWithOnnxRuntime(arch, size);

    [TestMethod, TestCategory("Slow")]
    [DataRow("vgg11_bn", 32)]          // VGG's head with the adaptive 1x1 → 7x7 pooling as a matrix (a 530 MB graph)
    public void OnnxRuntimeGivesManMlsProbabilitiesForVgg(string arch, int size) => CompareWithOnnxRuntime(arch, size);

    private static void CompareWithOnnxRuntime(string arch, int size)
    {
        var dir = TestSupport.NewTempFolder();
        try
        {
            using var network = Architectures.Create(arch, 10, size);
            SyntheticWeights.Fill(network, 5); // batch-norm statistics far from 0/1, so folding them is checked
            network.eval();
            var normalization = new Normalization(new[] { 0.5f, 0.4f, 0.3f }, new[] { 0.2f, 0.25f, 0.3f });
            var (probe, _) = ProbeBatch.Create(size, 10);
            using var pixels = probe.Plus(1).TimesInPlace(127.5).round();               // (4, 3, S, S) in 0..255
            using (no_grad())
            {
                // Random weights give logits in the hundreds; scale the classifier so the probabilities are not all 0 or 1.
                using var raw = network.call(normalization.Apply(pixels.DividedBy(255)));
                var last = network.Head.parameters().ToList();
                double shrink = 3 / raw.abs().max().item<float>();
                foreach (var p in last.TakeLast(2)) p.TimesInPlace(shrink);
            }
            float[] expected;
            using (no_grad())
            using (var logits = network.call(normalization.Apply(pixels.DividedBy(255))))
                expected = nn.functional.softmax(logits, 1).data<float>().ToArray();

            var path = Path.Combine(dir, "model.onnx");
            OnnxExport.Save(network, path, normalization, Enumerable.Range(0, 10).Select(i => $"c{i}").ToArray(), size, ImageRecipe.Cifar);
            using var session = new InferenceSession(path);
            Assert.AreEqual(OnnxExport.InputName, session.InputMetadata.Keys.Single());
            Assert.AreEqual(OnnxExport.OutputName, session.OutputMetadata.Keys.Single());
            Assert.AreEqual(size.ToString(), session.ModelMetadata.CustomMetadataMap[OnnxExport.ImageSizeKey]);
            var input = new DenseTensor<float>(pixels.contiguous().data<float>().ToArray(), new[] { ProbeBatch.Size, 3, size, size });
            using var results = session.Run(new[] { NamedOnnxValue.CreateFromTensor(OnnxExport.InputName, input) });
            var actual = results.Single().AsEnumerable<float>().ToArray();
            Assert.HasCount(expected.Length, actual);
            double largest = expected.Zip(actual, (a, b) => Math.Abs(a - b)).Max();
            Assert.IsTrue(largest <= 1e-4, $"{arch}: ONNX Runtime's probabilities differ from Man.ML's by up to {largest:E2}");
            for (int n = 0; n < ProbeBatch.Size; n++)
            {
                var e = expected.Skip(10 * n).Take(10).ToList();
                var a = actual.Skip(10 * n).Take(10).ToList();
                Assert.AreEqual(e.IndexOf(e.Max()), a.IndexOf(a.Max()), $"{arch}: image {n}'s top-1 differs");
            }
            probe.Dispose();
        }
        finally { Directory.Delete(dir, true); }
    }

    internal static string OnnxScoringDll()
    {
#if DEBUG
        const string configuration = "Debug";
#else
        const string configuration = "Release";
#endif
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Man.sln"))) dir = dir.Parent;
        Assert.IsNotNull(dir, "the repository root (Man.sln) was not found above the test assembly");
        var dll = Path.Combine(dir.FullName, "Man.ML.OnnxScoring", "bin", configuration, "net10.0", "manml-onnx-score.dll");
        Assert.IsTrue(File.Exists(dll), $"{dll} was not built (the test project references Man.ML.OnnxScoring so that it is)");
        return dll;
    }

    [TestMethod, TestCategory("Slow")]
    [DataRow("resnet32", 32)]
    [DataRow("resnet18", 64)]
    public void TheTorchSharpFreeSampleScoresTheExportedModelAsTheTransformerDoes(string architecture, int size)
    {
        var folder = TestSupport.NewTempFolder();
        try
        {
            var mlContext = new MLContext(0);
            var rows = ImageFolderSample.ListImages(ImageFolderFixture.Train).Where((_, i) => i % 5 == 0).ToList();
            var train = mlContext.Data.LoadFromEnumerable(rows);
            var validation = mlContext.Data.LoadFromEnumerable(ImageFolderSample.ListImages(ImageFolderFixture.Validation));
            var pipeline = mlContext.Transforms.Conversion.MapValueToKey("Label")
                .Append(mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImageRow.ImagePath)))
                .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
                {
                    Architecture = architecture, ImageSize = size, Rule = LearningRule.Dgl, UseMan = true, K = 2, Epochs = 1, BatchSize = 50, Seed = 1,
                }));
            using var model = pipeline.Fit(train);
            var expected = model.Transform(validation).GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToArray();
            var onnx = Path.Combine(folder, "model.onnx");
            model.LastTransformer.SaveAsOnnx(onnx);

            var scores = Path.Combine(folder, "scores.json");
            var result = TestSupport.Run("dotnet", new[] { OnnxScoringDll(), "--model", onnx, "--images", ImageFolderFixture.Validation,
                "--scores-out", scores, "--rounds", "1" });
            Assert.AreEqual(0, result.ExitCode, result.Stderr);
            StringAssert.Contains(result.Stdout, "images/s");
            using var json = JsonDocument.Parse(File.ReadAllText(scores));
            var actual = json.RootElement.GetProperty("scores").EnumerateArray()
                .Select(r => r.EnumerateArray().Select(v => BitConverter.Int32BitsToSingle(Convert.ToInt32(v.GetString(), 16))).ToArray()).ToArray();
            Assert.HasCount(expected.Length, actual);
            double largest = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                Assert.AreEqual(Array.IndexOf(expected[i], expected[i].Max()),
                    Array.IndexOf(actual[i], actual[i].Max()), $"{architecture}: image {i}'s top-1 differs");
                largest = Math.Max(largest, expected[i].Zip(actual[i], (a, b) => Math.Abs(a - b)).Max());
            }
            Assert.IsTrue(largest <= 1e-4, $"{architecture}: probabilities differ by up to {largest:E2}");

            // The saved ML.NET model through the command line: the same ONNX bytes, and a state dict of the backbone.
            var zip = Path.Combine(folder, "model.manml.zip");
            mlContext.Model.SaveManModel(model, train.Schema, zip);
            var again = Path.Combine(folder, "again.onnx");
            var export = TestSupport.RunManml(new[] { "export-onnx", "--model", zip, "--out", again });
            Assert.AreEqual(0, export.ExitCode, export.Stderr);
            CollectionAssert.AreEqual(File.ReadAllBytes(onnx), File.ReadAllBytes(again), "export-onnx of the saved model differs from SaveAsOnnx");
            var weights = Path.Combine(folder, "backbone.safetensors");
            var exportWeights = TestSupport.RunManml(new[] { "export-weights", "--model", zip, "--out", weights });
            Assert.AreEqual(0, exportWeights.ExitCode, exportWeights.Stderr);
            using (var copy = Architectures.Create(architecture, 10, size))
            {
                PyTorchWeights.Load(copy, weights);
                foreach (var ((key, a), (_, b)) in copy.state_dict().Zip(model.LastTransformer.Network.state_dict()))
                    Assert.IsTrue(a.equal(b.cpu()).all().item<bool>(), $"{key} differs in the exported state dict");
            }
            Console.WriteLine($"{architecture}: {expected.Length} images, top-1 identical, " +
                $"largest probability difference {largest:E2}; {result.Stdout.Trim()}");
        }
        finally { Directory.Delete(folder, true); }
    }

    [TestMethod]
    public void TheSampleRefusesAModelWithoutManMlsMetadata()
    {
        var folder = TestSupport.NewTempFolder();
        try
        {
            var path = Path.Combine(folder, "bare.onnx");
            using var network = new CifarResNet(8, 10);
            var model = OnnxExport.Build(network, Normalization.Cifar, 32, new Dictionary<string, string>());
            File.WriteAllBytes(path, Google.Protobuf.MessageExtensions.ToByteArray(model));
            var result = TestSupport.Run("dotnet", new[] { OnnxScoringDll(), "--model", path, "--images", ImageFolderFixture.Validation });
            Assert.AreEqual(2, result.ExitCode, result.Stdout + result.Stderr);
            StringAssert.Contains(result.Stderr, "has no 'manml.classes' metadata");
            Assert.DoesNotContain("   at ", result.Stderr, "a user mistake printed a stack trace");
        }
        finally { Directory.Delete(folder, true); }
    }
}
