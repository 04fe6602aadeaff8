using System.Text.Json;
using Man.ML.Interop;
using Man.ML.Models;
using Man.ML.Samples.Tooling;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Tests;

/// <summary>
/// Man.ML against PyTorch on the same weights: Golden/pytorch_golden.json holds what torchvision's ResNet-18 and
/// ResNet-50 and the script's CIFAR ResNet-32 compute in float64 on the probe batch with weights regenerated from seed 1
/// (scripts/pytorch_interop.py golden; docs/INTEROP.md): eval-mode logits, the train-mode logits and cross-entropy, and
/// every parameter's gradient norm after one backward pass. The weights are regenerated here the same way, and each
/// network runs twice:
/// * in float64, where the two implementations must agree to float64's rounding (1e-9 relative): the same function;
/// * in float32, Man.ML's training precision along the convolution routes this CPU takes, against the float64 values:
///   logits within 1e-4 of the largest logit's magnitude, loss within 1e-4, each gradient norm within 1e-2 relative (plus
///   1e-6 of the largest norm, for near-zero gradients). Train-mode batch norm over a batch of four amplifies float32
///   rounding layer by layer; which kernels a CPU's oneDNN picks decides the rounding, so a float32 reference would hold
///   on one CPU family and not another (it was 0.6 % off the float64 value at ResNet-50's stem on an AVX2 CPU).
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

    private static void AssertClose(Tensor actual, Tensor expected, double tolerance, string what)
    {
        double scale = Math.Max(1, expected.abs().max().item<double>());
        double error = (actual.to_type(ScalarType.Float64) - expected).abs().max().item<double>();
        Assert.IsTrue(error <= tolerance * scale, $"{what}: largest difference from PyTorch {error:E3}, allowed {tolerance * scale:E3} " +
            $"({tolerance:G2} of the largest logit, {scale:G6})");
    }

    [TestMethod]
    [DataRow("resnet18", ScalarType.Float64)]
    [DataRow("resnet50", ScalarType.Float64)]
    [DataRow("resnet32", ScalarType.Float64)]
    [DataRow("resnet18", ScalarType.Float32)]
    [DataRow("resnet50", ScalarType.Float32)]
    [DataRow("resnet32", ScalarType.Float32)]
    public void LogitsLossAndGradientNormsMatchPyTorchs(string arch, ScalarType precision)
    {
        bool exact = precision == ScalarType.Float64;
        // float32: at 64 px ResNet-50's layer4 normalises 2x2 maps of a batch of 4, 16 values per channel, and its batch-norm
        // backward amplifies float32 rounding into every gradient before it: measured on an AVX-512 EPYC (family 26),
        // every conv weight gradient of the float32 network is 4 % off the float64 one's (uniformly: no layer stands
        // out, as a faulty kernel would), and gradient norms up to 1.5 %, 0.2 % apart between 1 and 2 threads. A wrong
        // structure or weight mapping is off by O(1).
        double logitTolerance = exact ? 1e-9 : 1e-4, lossTolerance = exact ? 1e-9 : 1e-4, normTolerance = exact ? 1e-9 : 3e-2;
        var golden = Model(arch);
        int classes = golden.GetProperty("classes").GetInt32(), size = golden.GetProperty("image_size").GetInt32();
        using var scope = NewDisposeScope();
        using var network = Architectures.Create(arch, classes, size);
        SyntheticWeights.Fill(network, GoldenFile.GetProperty("seed").GetInt32());
        network.to(precision);
        var (images, labels) = ProbeBatch.Create(size, classes);
        images = images.to(precision);
        string what = $"{arch} ({precision})";

        network.eval();
        using (no_grad()) AssertClose(network.call(images), Matrix(golden.GetProperty("eval_logits")), logitTolerance, $"{what} eval-mode logits");

        network.train();
        var logits = network.call(images);
        AssertClose(logits.detach(), Matrix(golden.GetProperty("train_logits")), logitTolerance, $"{what} train-mode logits");
        var loss = nn.functional.cross_entropy(logits, labels);
        double expectedLoss = golden.GetProperty("train_loss").GetDouble();
        Assert.AreEqual(expectedLoss, loss.to_type(ScalarType.Float64).item<double>(), lossTolerance * Math.Max(1, expectedLoss),
            $"{what}: cross-entropy differs from PyTorch's");
        loss.backward();

        var norms = golden.GetProperty("grad_norms").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble());
        var names = PyTorchWeights.KeysOf(network).Zip(network.state_dict().Keys).ToDictionary(p => p.Second, p => p.First);
        double largest = norms.Values.Max();
        int compared = 0;
        var worst = (Key: "", Relative: 0.0);
        foreach (var (key, parameter) in network.named_parameters())
        {
            var torchKey = names[key];
            Assert.IsTrue(norms.TryGetValue(torchKey, out double expected), $"{what}: PyTorch has no parameter '{torchKey}'");
            double actual = parameter.grad!.to_type(ScalarType.Float64).norm().item<double>();
            double relative = Math.Abs(actual - expected) / Math.Max(expected, 1e-30);
            if (relative > worst.Relative) worst = (torchKey, relative);
            Assert.IsTrue(Math.Abs(actual - expected) <= normTolerance * expected + (exact ? 0 : 1e-6 * largest),
                $"{what}: gradient norm of '{torchKey}' is {actual:G10}, PyTorch's {expected:G10} " +
                $"(relative difference {relative:E2}, allowed {normTolerance:G2})");
            compared++;
        }
        Assert.AreEqual(norms.Count, compared, $"{what}: PyTorch has {norms.Count} parameters, Man.ML compared {compared}");
        Console.WriteLine($"{what}: {compared} gradient norms, worst relative difference {worst.Relative:E2} at {worst.Key}");
    }
}
