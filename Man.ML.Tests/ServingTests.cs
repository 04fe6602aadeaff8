using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Man.ML.MLNet;
using Man.ML.Samples.MLNet;
using Man.ML.Serving;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.Tests;

/// <summary>
/// manml-serve under load: concurrent clients get exactly what scoring each image alone gives, bad bodies get one 400
/// each while the service keeps answering; latency and throughput are printed for both scoring modes (not asserted).
/// </summary>
[TestClass]
public sealed class ServingTests
{
    private static string folder = "";
    private static string modelPath = "";
    private static string onnxPath = "";
    private static List<byte[]> images = null!;
    private static List<float[]> alone = null!;
    private static string[] classes = null!;

    [ClassInitialize]
    public static void TrainAndSave(TestContext _)
    {
        folder = TestSupport.NewTempFolder();
        var mlContext = new MLContext(0);
        var train = mlContext.Data.LoadFromEnumerable(ImageFolderSample.ListImages(ImageFolderFixture.Train));
        var model = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImageRow.ImagePath)))
            .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
            {
                Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 64, Seed = 1,
            }))
            .Fit(train);
        modelPath = Path.Combine(folder, "model.manml.zip");
        mlContext.Model.SaveManModel(model, train.Schema, modelPath);
        var man = model.LastTransformer;
        onnxPath = Path.Combine(folder, "model.onnx");
        man.SaveAsOnnx(onnxPath);
        classes = man.KeyValues!.Names().ToArray();
        images = ImageFolderSample.ListImages(ImageFolderFixture.Validation).Take(40).Select(r => File.ReadAllBytes(r.ImagePath)).ToList();
        // The reference: each image scored alone, one after another, by the trained transformer.
        alone = images.Select(bytes =>
        {
            var one = mlContext.Data.LoadFromEnumerable(new[] { new EncodedImage { Image = bytes } });
            return man.Transform(one).GetColumn<Microsoft.ML.Data.VBuffer<float>>("Score").Single().DenseValues().ToArray();
        }).ToList();
        model.Dispose();
    }

    private sealed class EncodedImage
    {
        public byte[] Image { get; set; } = Array.Empty<byte>();
    }

    [ClassCleanup]
    public static void Cleanup() => Directory.Delete(folder, true);

    private static WebApplicationFactory<ModelHost> Service(ScoringMode mode, long maxBytes = 8 << 20, string? model = null) =>
        new WebApplicationFactory<ModelHost>().WithWebHostBuilder(b => b
            .UseSetting("Model", model ?? modelPath).UseSetting("Scoring", mode.ToString()).UseSetting("MaxRequestBytes", maxBytes.ToString()));

    private sealed record Answer(string Label, float Probability, Dictionary<string, float> Scores);

    [TestMethod]
    [DataRow(ScoringMode.Batching, false)]
    [DataRow(ScoringMode.EnginePool, false)]
    [DataRow(ScoringMode.Batching, true)]
    public async Task ConcurrentClientsGetEachImagesOwnScoresAndLatencyIsPrinted(ScoringMode mode, bool onnx)
    {
        // The ONNX model is scored by ONNX Runtime (its float arithmetic, not libtorch's): the same probabilities to 1e-4.
        await using var service = Service(mode, model: onnx ? onnxPath : null);
        using var client = service.CreateClient();
        Assert.AreEqual(HttpStatusCode.OK, (await client.GetAsync("/healthz")).StatusCode);
        var ready = await client.GetAsync("/ready");
        Assert.AreEqual(HttpStatusCode.OK, ready.StatusCode);
        StringAssert.Contains(await ready.Content.ReadAsStringAsync(), onnx ? "ONNX resnet8" : "resnet8 dgl+man K=2");

        const int Clients = 8, PerClient = 30;
        var latencies = new double[Clients * PerClient];
        int errors = 0;
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, Clients).Select(c => Task.Run(async () =>
        {
            for (int r = 0; r < PerClient; r++)
            {
                int i = (c * 7 + r) % images.Count;
                var started = Stopwatch.GetTimestamp();
                using var response = await client.PostAsync("/predict", new ByteArrayContent(images[i]));
                latencies[c * PerClient + r] = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                if (response.StatusCode != HttpStatusCode.OK) { Interlocked.Increment(ref errors); continue; }
                var answer = (await response.Content.ReadFromJsonAsync<Answer>(new JsonSerializerOptions(JsonSerializerDefaults.Web)))!;
                for (int k = 0; k < classes.Length; k++)
                    Assert.AreEqual(alone[i][k], answer.Scores[classes[k]], onnx ? 1e-4 : 1e-5, $"image {i}, class {classes[k]} ({mode}, onnx {onnx})");
                Assert.AreEqual(answer.Scores.MaxBy(s => s.Value).Key, answer.Label);
            }
        })));
        double seconds = clock.Elapsed.TotalSeconds;
        Assert.AreEqual(0, errors, $"{errors} requests failed ({mode}, onnx {onnx})");
        Array.Sort(latencies);
        Console.WriteLine($"manml-serve {(onnx ? "ONNX" : mode.ToString())}: {Clients} clients x {PerClient} requests, resnet8 at 32x32: " +
                          $"p50 {latencies[latencies.Length / 2]:0.0} ms, p99 {latencies[(int)(latencies.Length * 0.99)]:0.0} ms, " +
                          $"{latencies.Length / seconds:0.0} images/s");
    }

    [TestMethod]
    public async Task EmptyTooLargeAndNonImageBodiesGetOne400EachAndTheServiceKeepsAnswering()
    {
        await using var service = Service(ScoringMode.Batching, maxBytes: 64 << 10);
        using var client = service.CreateClient();
        async Task<string> Bad(HttpContent content)
        {
            using var response = await client.PostAsync("/predict", content);
            Assert.AreEqual(HttpStatusCode.BadRequest, response.StatusCode);
            var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetString()!;
            Assert.IsFalse(error.Contains('\n'), error);
            return error;
        }
        StringAssert.Contains(await Bad(new ByteArrayContent(Array.Empty<byte>())), "empty");
        StringAssert.Contains(await Bad(new ByteArrayContent(new byte[100 << 10])), "larger than 65536 bytes");
        StringAssert.Contains(await Bad(new ByteArrayContent("this is not an image"u8.ToArray())), "not an image");
        var truncatedPng = images[0][..(images[0].Length / 3)];
        StringAssert.Contains(await Bad(new ByteArrayContent(truncatedPng)), "not an image");
        // Bad and good requests at once: each bad one fails alone, every good one is scored.
        var mixed = await Task.WhenAll(Enumerable.Range(0, 12).Select(i => client.PostAsync("/predict",
            new ByteArrayContent(i % 3 == 0 ? "junk"u8.ToArray() : images[i]))));
        for (int i = 0; i < 12; i++)
            Assert.AreEqual(i % 3 == 0 ? HttpStatusCode.BadRequest : HttpStatusCode.OK, mixed[i].StatusCode, $"request {i}");
        using var after = await client.PostAsync("/predict", new ByteArrayContent(images[1]));
        Assert.AreEqual(HttpStatusCode.OK, after.StatusCode, "the service stopped answering after bad requests");
    }
}
