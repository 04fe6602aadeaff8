using System.Text.Json;
using Man.ML.Interop;
using Man.ML.Models;
using Man.ML.Samples.Tooling;
using static TorchSharp.torch;

namespace Man.ML.Tests;

/// <summary>
/// Man.ML against PyTorch on the same weights: Golden/pytorch_golden.json holds what torchvision's ResNet-18 and
/// ResNet-50 and the script's CIFAR ResNet-32 compute on the probe batch with weights regenerated from seed 1
/// (scripts/pytorch_interop.py golden; docs/INTEROP.md): eval-mode logits, the train-mode logits and cross-entropy, and
/// every parameter's gradient norm after one backward pass. The weights are regenerated here the same way.
/// Tolerances: logits within 1e-4 of the largest logit's magnitude, loss within 1e-4, each gradient norm within 1e-3
/// relative (plus 1e-6 of the largest norm, for near-zero gradients): float32 convolutions summed in another order
/// differ by about 1e-6 relative per layer, which deep networks compound.
/// </summary>
[TestClass]
public sealed class PyTorchGoldenTests
{
    private static readonly JsonElement GoldenFile = JsonDocument.Parse(
        File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Golden", "pytorch_golden.json"))).RootElement;

    private static JsonElement Model(string arch) => GoldenFile.GetProperty("models").EnumerateArray().Single(m => m.GetProperty("arch").GetString() == arch);

    private static Tensor Matrix(JsonElement rows) =>
        tensor(rows.EnumerateArray().SelectMany(r => r.EnumerateArray().Select(v => v.GetDouble())).ToArray(),
            new long[] { rows.GetArrayLength(), rows[0].GetArrayLength() });

    private static void AssertClose(Tensor actual, Tensor expected, string what)
    {
        double scale = Math.Max(1, expected.abs().max().item<double>());
        double error = (actual.to_type(ScalarType.Float64) - expected).abs().max().item<double>();
        Assert.IsTrue(error <= 1e-4 * scale, $"{what}: largest difference from PyTorch {error:E3}, allowed {1e-4 * scale:E3} " +
            $"(1e-4 of the largest logit, {scale:G6})");
        Assert.IsTrue(actual.argmax(1).equal(expected.argmax(1)).all().item<bool>(), $"{what}: top-1 differs from PyTorch's");
    }

    [TestMethod]
    [DataRow("resnet18")]
    [DataRow("resnet50")]
    [DataRow("resnet32")]
    public void LogitsLossAndGradientNormsMatchPyTorchs(string arch)
    {
        var golden = Model(arch);
        int classes = golden.GetProperty("classes").GetInt32(), size = golden.GetProperty("image_size").GetInt32();
        using var scope = NewDisposeScope();
        using var network = Architectures.Create(arch, classes, size);
        SyntheticWeights.Fill(network, GoldenFile.GetProperty("seed").GetInt32());
        var (images, labels) = ProbeBatch.Create(size, classes);

        network.eval();
        using (no_grad()) AssertClose(network.call(images), Matrix(golden.GetProperty("eval_logits")), $"{arch} eval-mode logits");

        network.train();
        var logits = network.call(images);
        AssertClose(logits.detach(), Matrix(golden.GetProperty("train_logits")), $"{arch} train-mode logits");
        var loss = nn.functional.cross_entropy(logits, labels);
        double expectedLoss = golden.GetProperty("train_loss").GetDouble();
        Assert.AreEqual(expectedLoss, loss.item<float>(), 1e-4, $"{arch}: cross-entropy differs from PyTorch's");
        loss.backward();

        var norms = golden.GetProperty("grad_norms").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble());
        var names = PyTorchWeights.KeysOf(network).Zip(network.state_dict().Keys).ToDictionary(p => p.Second, p => p.First);
        double largest = norms.Values.Max();
        int compared = 0;
        var worst = (Key: "", Relative: 0.0);
        foreach (var (key, parameter) in network.named_parameters())
        {
            var torchKey = names[key];
            Assert.IsTrue(norms.TryGetValue(torchKey, out double expected), $"{arch}: PyTorch has no parameter '{torchKey}'");
            double actual = parameter.grad!.to_type(ScalarType.Float64).norm().item<double>();
            double relative = Math.Abs(actual - expected) / Math.Max(expected, 1e-30);
            if (relative > worst.Relative) worst = (torchKey, relative);
            Assert.IsTrue(Math.Abs(actual - expected) <= 1e-3 * expected + 1e-6 * largest,
                $"{arch}: gradient norm of '{torchKey}' is {actual:G8}, PyTorch's {expected:G8} (relative difference {relative:E2}, allowed 1e-3)");
            compared++;
        }
        Assert.AreEqual(norms.Count, compared, $"{arch}: PyTorch has {norms.Count} parameters, Man.ML compared {compared}");
        Console.WriteLine($"{arch}: {compared} gradient norms, worst relative difference {worst.Relative:E2} at {worst.Key}");
    }
}
