using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Man.ML.Interop;
using Man.ML.MLNet;
using Microsoft.ML;
using Man.ML.Models;
using Man.ML.Training;
using TorchSharp;

namespace Man.ML.Tests;

/// <summary>
/// Pretrained weights by name: downloaded from a server on 127.0.0.1 (never another address), verified, cached, refused
/// when tampered with or cut short, and trained from with no server at all.
/// </summary>
[TestClass]
public sealed class PretrainedWeightsTests
{
    // A minimal HTTP/1.1 server on the loopback interface: /good/F serves the file, /tampered/F the file with one byte
    // changed, /truncated/F announces the whole length and closes after half, anything else is 404.
    private sealed class LoopbackServer : IDisposable
    {
        private readonly TcpListener listener = new(IPAddress.Loopback, 0);
        private readonly byte[] file;
        private readonly Task loop;
        public int Requests;

        public LoopbackServer(byte[] file)
        {
            this.file = file;
            listener.Start();
            loop = Task.Run(Serve);
        }

        public string Url(string route, string name) => $"http://127.0.0.1:{((IPEndPoint)listener.LocalEndpoint).Port}/{route}/{name}";

        private async Task Serve()
        {
            while (true)
            {
                TcpClient client;
                try { client = await listener.AcceptTcpClientAsync(); }
                catch (Exception e) when (e is SocketException or ObjectDisposedException) { return; }
                using (client)
                {
                    Interlocked.Increment(ref Requests);
                    var stream = client.GetStream();
                    var request = new StringBuilder();
                    var buffer = new byte[4096];
                    while (!request.ToString().Contains("\r\n\r\n"))
                    {
                        int n = await stream.ReadAsync(buffer);
                        if (n == 0) break;
                        request.Append(Encoding.ASCII.GetString(buffer, 0, n));
                    }
                    var path = request.ToString().Split(' ')[1];
                    byte[] body = file;
                    int send = file.Length;
                    if (path.StartsWith("/tampered/")) { body = (byte[])file.Clone(); body[body.Length / 2] ^= 1; }
                    else if (path.StartsWith("/truncated/")) send = file.Length / 2;
                    else if (!path.StartsWith("/good/"))
                    {
                        await stream.WriteAsync(Encoding.ASCII.GetBytes("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"));
                        continue;
                    }
                    await stream.WriteAsync(Encoding.ASCII.GetBytes(
                        $"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {body.Length}\r\nConnection: close\r\n\r\n"));
                    await stream.WriteAsync(body.AsMemory(0, send));
                }
            }
        }

        public void Dispose()
        {
            listener.Stop();
            loop.Wait(TimeSpan.FromSeconds(10));
        }
    }

    private static string NewFolder()
    {
        var dir = Path.Combine(Path.GetTempPath(), "manml-pretrained-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    [TestMethod]
    public void WeightsAreDownloadedVerifiedCachedRefusedWhenWrongAndTrainedFromOffline()
    {
        var work = NewFolder();
        var cache = Path.Combine(work, "cache");
        try
        {
            // "Pretrained" weights: a ResNet-8 with 100 classes written by Man.ML in PyTorch's format.
            torch.manual_seed(11);
            var weightsPath = Path.Combine(work, "resnet8-c100.pth");
            using (var pretrained = new CifarResNet(8, 100)) PyTorchWeights.Save(pretrained, weightsPath);
            var bytes = File.ReadAllBytes(weightsPath);
            var sha = Convert.ToHexStringLower(SHA256.HashData(bytes));
            const string FileName = "resnet8-c100.pth";
            PretrainedSource Source(LoopbackServer server, string route, string name) =>
                new("resnet8", name, new Uri(server.Url(route, FileName)), sha, Data.Normalization.Cifar);

            string cached;
            using (var server = new LoopbackServer(bytes))
            {
                // A tampered file: refused with one line, nothing left in the cache.
                var tampered = Assert.ThrowsExactly<PretrainedWeightsException>(() => PretrainedWeights.Fetch(Source(server, "tampered", "t"), cache));
                StringAssert.Contains(tampered.Message, "refused");
                Assert.IsFalse(tampered.Message.Contains('\n'), tampered.Message);
                Assert.AreEqual(0, Directory.GetFiles(cache).Length, "a refused download left files in the cache");
                // A transfer that ends early: one line, nothing left.
                var truncated = Assert.ThrowsExactly<PretrainedWeightsException>(() => PretrainedWeights.Fetch(Source(server, "truncated", "t"), cache));
                Assert.IsTrue(truncated.Message.Contains("truncated") || truncated.Message.Contains("broke off"), truncated.Message);
                Assert.IsFalse(truncated.Message.Contains('\n'), truncated.Message);
                Assert.AreEqual(0, Directory.GetFiles(cache).Length, "a truncated download left files in the cache");
                // A missing file: the server's answer, in one line.
                var missing = Assert.ThrowsExactly<PretrainedWeightsException>(() => PretrainedWeights.Fetch(Source(server, "nowhere", "t"), cache));
                StringAssert.Contains(missing.Message, "404");

                // The real file: downloaded with progress, verified, cached under its own name.
                var reports = new List<DownloadProgress>();
                PretrainedWeights.Register(Source(server, "good", "loopback-test"));
                cached = PretrainedWeights.Fetch(PretrainedWeights.Find("resnet8", "LOOPBACK-TEST"), cache, reports.Add);
                Assert.AreEqual(Path.Combine(cache, FileName), cached);
                CollectionAssert.AreEqual(bytes, File.ReadAllBytes(cached));
                Assert.AreEqual(new DownloadProgress(bytes.Length, bytes.Length), reports[^1]);
                CollectionAssert.AreEquivalent(new[] { cached }, Directory.GetFiles(cache), "only the verified file is in the cache");
                int requests = server.Requests;
                Assert.AreEqual(cached, PretrainedWeights.Fetch(PretrainedWeights.Find("resnet8", "loopback-test"), cache));
                Assert.AreEqual(requests, server.Requests, "a verified cached file was downloaded again");
            }

            // No server any more: training starts from the cache, the classifier replaced for 10 classes.
            var options = new TrainingOptions
            {
                Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 32, Seed = 3, Pretrained = "loopback-test", PretrainedCache = cache,
            };
            var trainer = new Trainer(options);
            var plan = trainer.Prepare(10, 32);
            Assert.IsTrue(plan.InitialWeights!.HeadReplaced);
            Assert.AreEqual("loopback-test", plan.ToJson()["pretrained"]!.GetValue<string>());
            using (var file = new CifarResNet(8, 100))
            {
                PyTorchWeights.Load(file, weightsPath);
                foreach (var ((key, loaded), (_, original)) in trainer.PreparedNetwork!.state_dict().Zip(file.state_dict()))
                    if (!key.StartsWith("head.", StringComparison.Ordinal))
                        Assert.IsTrue(loaded.equal(original).all().item<bool>(), $"{key} was not loaded from the cached weights");
            }
            using var train = TestSupport.SampleImages(0, 64);
            var result = new Trainer(options).Train(train, null);
            Assert.IsTrue(double.IsFinite(result.Epochs[^1].TrainLoss));
            result.Network.Dispose();

            // The same through ML.NET: the weights from the cache, their normalisation, both said in MLContext.Log.
            var mlContext = new Microsoft.ML.MLContext(0);
            var messages = new List<string>();
            mlContext.Log += (_, e) => { if (e.Message.Contains("Man.ML")) lock (messages) messages.Add(e.Message); };
            var rows = Man.ML.Samples.MLNet.ImageFolderSample.ListImages(ImageFolderFixture.Train).Where((_, i) => i % 10 == 0).ToList();
            var data = mlContext.Data.LoadFromEnumerable(rows);
            using var fitted = mlContext.Transforms.Conversion.MapValueToKey("Label")
                .Append(mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(Man.ML.Samples.MLNet.ImageRow.ImagePath)))
                .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(new Man.ML.MLNet.ManImageClassificationTrainer.Options
                {
                    Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 50, Seed = 1, Pretrained = "loopback-test", PretrainedCache = cache,
                }))
                .Fit(data);
            var log = string.Join("\n", messages);
            StringAssert.Contains(log, "pretrained weights: resnet8 loopback-test from http://127.0.0.1:");
            StringAssert.Contains(log, "normalisation of the pretrained weights");
            StringAssert.Contains(log, "its classifier has another class count and was replaced by a fresh 10-class one");
            CollectionAssert.AreEqual(Data.Normalization.Cifar.Mean, fitted.LastTransformer.Normalization.Mean);

            // A cached file changed on disk is not used: with no server it cannot be fetched again, and says so.
            var onDisk = File.ReadAllBytes(cached);
            onDisk[^10] ^= 1;
            File.WriteAllBytes(cached, onDisk);
            var offline = Assert.ThrowsExactly<PretrainedWeightsException>(() => PretrainedWeights.Fetch(PretrainedWeights.Find("resnet8",
                "loopback-test"), cache));
            StringAssert.Contains(offline.Message, "Cannot download");
            Assert.IsFalse(offline.Message.Contains('\n'), offline.Message);
        }
        finally
        {
            Directory.Delete(work, true);
        }
    }

    [TestMethod]
    public void TorchvisionsWeightsAreKnownByNameAndUnknownNamesAreOptionErrors()
    {
        var resnet18 = PretrainedWeights.Find("resnet18", "imagenet");
        Assert.AreEqual("https://download.pytorch.org/models/resnet18-f37072fd.pth", resnet18.Url.ToString());
        Assert.AreEqual("f37072fd", resnet18.Sha256);
        Assert.AreEqual("IMAGENET1K_V2", PretrainedWeights.Find("ResNet50", "imagenet1k_v2").Name);
        foreach (var arch in new[] { "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
                     "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn" })
        {
            var source = PretrainedWeights.Find(arch, "imagenet");
            StringAssert.StartsWith(source.FileName, arch + "-");
            Assert.AreEqual(8, source.Sha256.Length);
            CollectionAssert.AreEqual(new[] { 0.485f, 0.456f, 0.406f }, source.Normalization.Mean);
        }
        var unknown = Assert.ThrowsExactly<InvalidOptionException>(() => PretrainedWeights.Find("resnet50", "imagenet21k"));
        Assert.AreEqual("Pretrained", unknown.Option);
        StringAssert.Contains(unknown.Message, "IMAGENET1K_V2");
        var none = Assert.ThrowsExactly<InvalidOptionException>(() => new Trainer(new TrainingOptions { Architecture = "resnet32", Pretrained = "imagenet" }));
        StringAssert.Contains(none.Message, "No pretrained weights are published for resnet32");
        var both = Assert.ThrowsExactly<InvalidOptionException>(() =>
            new Trainer(new TrainingOptions { Architecture = "resnet18", Pretrained = "imagenet", InitFrom = Path.GetTempFileName() }));
        Assert.AreEqual("Pretrained", both.Option);
    }

    [TestMethod]
    public void TheCommandLineNamesAnArchitectureWithoutPublishedWeightsInOneLine()
    {
        var r = TestSupport.RunManml(new[] { "train", "--arch", "resnet32", "--pretrained", "imagenet", "--epochs", "1" });
        Assert.AreEqual(2, r.ExitCode, r.Stderr + r.Stdout);
        StringAssert.Contains(r.Stderr, "No pretrained weights are published for resnet32");
        Assert.AreEqual(1, r.Stderr.Trim().Split('\n').Length, r.Stderr);
        var both = TestSupport.RunManml(new[] { "train", "--arch", "resnet18", "--pretrained", "imagenet1k_v3" });
        Assert.AreEqual(2, both.ExitCode, both.Stderr + both.Stdout);
        StringAssert.Contains(both.Stderr, "it has imagenet (IMAGENET1K_V1)");
    }

    [TestMethod]
    public void TheCacheFolderComesFromTheOptionThenTheEnvironment()
    {
        Assert.AreEqual(Path.GetFullPath("given"), PretrainedWeights.CacheFolder("given"));
        var before = Environment.GetEnvironmentVariable(PretrainedWeights.CacheVariable);
        try
        {
            Environment.SetEnvironmentVariable(PretrainedWeights.CacheVariable, "/tmp/manml-cache-variable");
            Assert.AreEqual("/tmp/manml-cache-variable", PretrainedWeights.CacheFolder());
            Environment.SetEnvironmentVariable(PretrainedWeights.CacheVariable, null);
            StringAssert.EndsWith(PretrainedWeights.CacheFolder(), Path.Combine("manml", "pretrained"));
        }
        finally { Environment.SetEnvironmentVariable(PretrainedWeights.CacheVariable, before); }
    }
}
