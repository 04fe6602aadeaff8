using System.Text;
using System.Text.Json;
using Man.ML.Data;
using Man.ML.Interop;
using Man.ML.MLNet;
using Man.ML.Models;
using Man.ML.Training;
using Microsoft.ML.OnnxRuntime;

namespace Man.ML.Tests;

/// <summary>
/// The model contract: model.ckpt records the image recipe and normalisation it was trained with, and every scorer
/// (export-onnx, the transformer, score-model) reads them from the file; a network trained by manml train on an image
/// folder scores the same top-1 on every image through the transformer and through its ONNX graph.
/// </summary>
[TestClass]
public sealed class ImageNetModelContractTests
{
    private static readonly string[] Classes = { "cat", "dog", "owl" };
    private static readonly Normalization Odd = new(new[] { 0.5f, 0.4f, 0.3f }, new[] { 0.2f, 0.25f, 0.3f });

    private static Dictionary<string, string> Metadata(string onnx)
    {
        using var session = new InferenceSession(onnx);
        return new Dictionary<string, string>(session.ModelMetadata.CustomMetadataMap);
    }

    // A checkpoint as Man.ML wrote it before the recipe was recorded: the same frame, a header without image_recipe.
    private static void SaveWithoutRecipe(string path, UnitChainNetwork network)
    {
        using var stream = File.Create(path);
        using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        var json = JsonSerializer.Serialize(new
        {
            architecture = network.Architecture, classes = Classes.Length, image_size = 32, class_names = Classes,
            normalization_mean = Odd.Mean, normalization_std = Odd.Std, trained_with = "dgl K=2",
        });
        CheckpointFormat.WriteHeader(writer, ModelCheckpoint.Magic, 1, json); // version 1: no checksum trailer
        network.save(writer);
    }

    [TestMethod]
    public void ExportOnnxOfACheckpointUsesTheRecipeTheFileRecords()
    {
        var dir = TestSupport.NewTempFolder();
        try
        {
            // A CIFAR-family network trained with ImageNet's crops: the family would say CIFAR, the file says ImageNet.
            using var network = Architectures.Create("resnet8", Classes.Length, 32);
            network.eval();
            var recorded = Path.Combine(dir, "model.ckpt");
            ModelCheckpoint.Save(recorded, network, new CheckpointInfo
            {
                Architecture = "resnet8", Classes = Classes.Length, ImageSize = 32, ClassNames = Classes,
                NormalizationMean = Odd.Mean, NormalizationStd = Odd.Std, ImageRecipe = ImageRecipe.ImageNet,
            });
            var (loaded, info) = ModelCheckpoint.Load(recorded);
            loaded.Dispose();
            Assert.AreEqual(ImageRecipe.ImageNet, info.Recipe);
            Assert.IsFalse(info.RecipeInferred);
            CollectionAssert.AreEqual(Odd.Mean, info.Normalization.Mean);

            var onnx = Path.Combine(dir, "model.onnx");
            var export = TestSupport.RunManml(new[] { "export-onnx", "--model", recorded, "--out", onnx });
            Assert.AreEqual(0, export.ExitCode, export.Stdout + export.Stderr);
            StringAssert.Contains(export.Stdout, "(imagenet recipe)");
            var metadata = Metadata(onnx);
            Assert.AreEqual("imagenet", metadata[OnnxExport.RecipeKey]);
            CollectionAssert.AreEqual(Odd.Mean, JsonSerializer.Deserialize<float[]>(metadata[OnnxExport.NormalizationMeanKey]));
            CollectionAssert.AreEqual(Odd.Std, JsonSerializer.Deserialize<float[]>(metadata[OnnxExport.NormalizationStdKey]));
            CollectionAssert.AreEqual(Classes, JsonSerializer.Deserialize<string[]>(metadata[OnnxExport.ClassesKey]));

            // --recipe cannot contradict the file.
            var contradicted = TestSupport.RunManml(new[] { "export-onnx", "--model", recorded, "--out", onnx, "--recipe", "cifar" });
            Assert.AreEqual(2, contradicted.ExitCode, contradicted.Stdout + contradicted.Stderr);
            StringAssert.Contains(contradicted.Stderr, "records the imagenet recipe");

            // The transformer made from the checkpoint scores with the file's recipe, normalisation and classes.
            using (var man = ManImageClassificationTransformer.FromCheckpoint(recorded))
            {
                Assert.AreEqual(ImageRecipe.ImageNet, man.ImageRecipe);
                CollectionAssert.AreEqual(Odd.Std, man.Normalization.Std);
                CollectionAssert.AreEqual(Classes, man.KeyValues!.Names());
                Assert.AreEqual(ImagePixels.CentreCrop(32, ImagePixels.ResizeFor(32), 96, 80), man.ScoringCrop(96, 80));
            }

            // A checkpoint from before the recipe was recorded still loads and exports, with the recipe inferred (and said so).
            var old = Path.Combine(dir, "old.ckpt");
            SaveWithoutRecipe(old, network);
            var (oldNetwork, oldInfo) = ModelCheckpoint.Load(old);
            oldNetwork.Dispose();
            Assert.IsTrue(oldInfo.RecipeInferred);
            Assert.AreEqual(ImageRecipe.Cifar, oldInfo.Recipe);
            var oldExport = TestSupport.RunManml(new[] { "export-onnx", "--model", old, "--out", onnx });
            Assert.AreEqual(0, oldExport.ExitCode, oldExport.Stdout + oldExport.Stderr);
            StringAssert.Contains(oldExport.Stdout, "does not record its recipe");
            Assert.AreEqual("cifar", Metadata(onnx)[OnnxExport.RecipeKey]);
            Assert.AreEqual(0, TestSupport.RunManml(new[] { "export-onnx", "--model", old, "--out", onnx, "--recipe", "imagenet" }).ExitCode);
            Assert.AreEqual("imagenet", Metadata(onnx)[OnnxExport.RecipeKey]);
        }
        finally { Directory.Delete(dir, true); }
    }

    // The fixture's images as an image folder with class folders for both halves (what score-model and the ONNX
    // scorer read).
    private static string ClassFolderCopy()
    {
        var root = TestSupport.NewTempFolder();
        var (train, val) = ImageNetFolder.Read(ImageNetFixture.Root);
        foreach (var (set, half) in new[] { (train, "train"), (val!, "val") })
            for (int i = 0; i < set.Count; i++)
            {
                var folder = Path.Combine(root, half, set.ClassNames[set.Labels[i]]);
                Directory.CreateDirectory(folder);
                File.Copy(set.Paths[i], Path.Combine(folder, Path.GetFileName(set.Paths[i])));
            }
        return root;
    }

    private static (string[] Images, float[][] Scores) ReadScores(JsonElement root) =>
        (root.GetProperty("images").EnumerateArray().Select(i => i.GetString()!).ToArray(),
         root.GetProperty("scores").EnumerateArray()
             .Select(r => r.EnumerateArray().Select(v => BitConverter.Int32BitsToSingle(Convert.ToInt32(v.GetString(), 16))).ToArray()).ToArray());

    // manml train on an image folder (ImageNet's recipe), then the transformer (score-model on the model.ckpt) and ONNX
    // Runtime (export-onnx, manml-onnx-score) on every validation image: the same top-1 everywhere.
    [TestMethod]
    [TestCategory("Slow")]
    public void ACliTrainedModelScoresTheSameThroughTheTransformerAndOnnx()
    {
        var root = ClassFolderCopy();
        try
        {
            var run = Path.Combine(root, "run");
            var train = TestSupport.RunManml(new[]
            {
                "train", "--dataset", "imagenet", "--data", root, "--arch", "resnet18", "--image-size", "64", "--k", "2", "--rule", "dgl", "--man",
                "--epochs", "1", "--batch-size", "8", "--seed", "3", "--no-backend-check", "--out", run,
            });
            Assert.AreEqual(0, train.ExitCode, train.Stdout + train.Stderr);
            var checkpoint = Path.Combine(run, "model.ckpt");
            var (network, info) = ModelCheckpoint.Load(checkpoint);
            network.Dispose();
            Assert.AreEqual(ImageRecipe.ImageNet, info.ImageRecipe, "manml train --dataset imagenet must record ImageNet's recipe");
            CollectionAssert.AreEqual(ImageNetTransform.ImageNetNormalization.Mean, info.NormalizationMean);

            var onnx = Path.Combine(root, "model.onnx");
            var export = TestSupport.RunManml(new[] { "export-onnx", "--model", checkpoint, "--out", onnx });
            Assert.AreEqual(0, export.ExitCode, export.Stdout + export.Stderr);
            var val = Path.Combine(root, "val");
            var transformer = TestSupport.RunManml(new[] { "score-model", "--model", checkpoint, "--images", val });
            Assert.AreEqual(0, transformer.ExitCode, transformer.Stdout + transformer.Stderr);
            var scoresPath = Path.Combine(root, "onnx-scores.json");
            var runtime = TestSupport.Run("dotnet", new[] { OnnxExportTests.OnnxScoringDll(), "--model", onnx, "--images", val,
                "--scores-out", scoresPath, "--rounds", "1" });
            Assert.AreEqual(0, runtime.ExitCode, runtime.Stdout + runtime.Stderr);
            StringAssert.Contains(runtime.Stdout, "(ImageNet recipe)");

            using var expectedJson = JsonDocument.Parse(transformer.Stdout);
            using var actualJson = JsonDocument.Parse(File.ReadAllText(scoresPath));
            var (expectedImages, expected) = ReadScores(expectedJson.RootElement);
            var (actualImages, actual) = ReadScores(actualJson.RootElement);
            CollectionAssert.AreEqual(expectedImages, actualImages, "the two scorers listed the images differently");
            Assert.HasCount(ImageNetFixture.Classes.Length * ImageNetFixture.PerClassVal, expected);
            double largest = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                Assert.AreEqual(Array.IndexOf(expected[i], expected[i].Max()),
                    Array.IndexOf(actual[i], actual[i].Max()), $"{expectedImages[i]}: top-1 differs");
                largest = Math.Max(largest, expected[i].Zip(actual[i], (a, b) => Math.Abs(a - b)).Max());
            }
            Assert.IsTrue(largest <= 1e-4, $"probabilities differ by up to {largest:E2}");
        }
        finally { Directory.Delete(root, true); }
    }
}
