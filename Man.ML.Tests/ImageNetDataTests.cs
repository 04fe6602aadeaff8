using System.Text.Json.Nodes;
using Man.ML.Data;
using static TorchSharp.torch;

namespace Man.ML.Tests;

[TestClass]
public sealed class ImageNetDataTests
{
    [TestMethod]
    public void ReadsTheImageNetLayoutWithAFlatLabelledValidationFolder()
    {
        var (train, val) = ImageNetFolder.Read(ImageNetFixture.Root);
        CollectionAssert.AreEqual(ImageNetFixture.Classes, train.ClassNames.ToArray());
        Assert.AreEqual(ImageNetFixture.Classes.Length * ImageNetFixture.PerClassTrain, train.Count);
        Assert.IsNotNull(val);
        Assert.AreEqual(ImageNetFixture.Classes.Length * ImageNetFixture.PerClassVal, val.Count);
        // val_labels.txt gives the class of every flat image: the fixture wrote them class by class, in name order.
        CollectionAssert.AreEqual(new[] { 0, 0, 1, 1, 2, 2, 3, 3 }, val.Labels.ToArray());
        Assert.AreEqual(3, train.Labels[train.Count - 1]);
    }

    [TestMethod]
    public void LabelFileMistakesNameTheFileAndLine()
    {
        var dir = TestSupport.NewTempFolder();
        var images = Path.Combine(dir, "val");
        Directory.CreateDirectory(images);
        var first = Directory.GetFiles(Path.Combine(ImageNetFixture.Root, "val"))[0];
        File.Copy(first, Path.Combine(images, "a.JPEG"));
        var labels = Path.Combine(dir, "val_labels.txt");
        File.WriteAllLines(labels, new[] { "a.JPEG n01000001", "b.JPEG n99999999" });
        var e = Assert.ThrowsExactly<InvalidDataException>(() => ImageNetFolder.ReadValidation(images, ImageNetFixture.Classes, labels));
        StringAssert.Contains(e.Message, "line 2");
        StringAssert.Contains(e.Message, "n99999999");
        File.WriteAllLines(labels, new[] { "ImageId,PredictionString" });
        e = Assert.ThrowsExactly<InvalidDataException>(() => ImageNetFolder.ReadValidation(images, ImageNetFixture.Classes, labels));
        StringAssert.Contains(e.Message, "a.JPEG");
        File.WriteAllLines(labels, new[] { "ImageId,PredictionString", "a,n01000003 10 20 30 40" }); // Kaggle's CSV
        Assert.AreEqual(2, ImageNetFolder.ReadValidation(images, ImageNetFixture.Classes, labels).Labels[0]);
        File.WriteAllText(Path.Combine(images, "a.JPEG"), "not an image");
        var set = ImageNetFolder.ReadValidation(images, ImageNetFixture.Classes, labels);
        var loader = new ImageBatchLoader(set, ImageNetTransform.ForCrop(32));
        var error = Assert.ThrowsExactly<InvalidDataException>(() => loader.Batches(new long[] { 0 }, new[] { (0, 1) }, false, 0, 0).ToList());
        StringAssert.Contains(error.Message, "a.JPEG");
        Assert.ThrowsExactly<DirectoryNotFoundException>(() => ImageNetFolder.Read(dir));
    }

    // Background decoding gives the same batches whatever the number of threads: each image's draws come from
    // (seed, epoch, position). Different epochs crop differently; evaluation crops are fixed.
    [TestMethod]
    public void DecodingIsDeterministicAcrossWorkerCounts()
    {
        var (train, _) = ImageNetFolder.Read(ImageNetFixture.Root);
        var order = Enumerable.Range(0, train.Count).Select(i => (long)((i * 7) % train.Count)).ToArray();
        var ranges = new[] { (0, 8), (8, 16), (16, train.Count) };
        List<(Tensor Images, Tensor Labels)> Run(int workers, int epoch, bool training) =>
            new ImageBatchLoader(train, ImageNetTransform.ForCrop(48), workers).Batches(order, ranges, training, 11, epoch).ToList();
        var one = Run(1, 0, true);
        var two = Run(2, 0, true);
        Assert.AreEqual(3, one.Count);
        CollectionAssert.AreEqual(new long[] { 8, 3, 48, 48 }, one[0].Images.shape);
        for (int b = 0; b < 3; b++)
        {
            Assert.IsTrue(one[b].Images.eq(two[b].Images).all().item<bool>());
            Assert.IsTrue(one[b].Labels.eq(two[b].Labels).all().item<bool>());
        }
        Assert.AreEqual(train.Labels[(int)order[0]], (int)one[0].Labels[0].item<long>());
        Assert.IsFalse(one[0].Images.eq(Run(2, 1, true)[0].Images).all().item<bool>(), "another epoch must crop differently");
        var eval1 = Run(1, 0, false);
        Assert.IsTrue(eval1[0].Images.eq(Run(2, 5, false)[0].Images).all().item<bool>(), "evaluation crops do not depend on the epoch");
        // Normalised with ImageNet's statistics: pixel values in [0, 1] map into [-0.485/0.229, (1-0.406)/0.225].
        Assert.IsTrue(one[0].Images.min().item<float>() >= -2.2f && one[0].Images.max().item<float>() <= 2.7f);
    }

    // Image files reach the network as the transformer's images do: decoded by MLImage, cropped and resized by
    // ImagePixels; a grayscale file gives three equal planes.
    [TestMethod]
    public void FilesAreCroppedAndResizedByImagePixelsAndGrayscaleGivesEqualPlanes()
    {
        var dir = TestSupport.NewTempFolder();
        try
        {
            var path = Path.Combine(dir, "gray.png");
            using (var bitmap = new SkiaSharp.SKBitmap(new SkiaSharp.SKImageInfo(50, 30, SkiaSharp.SKColorType.Gray8, SkiaSharp.SKAlphaType.Opaque)))
            {
                for (int y = 0; y < 30; y++)
                    for (int x = 0; x < 50; x++) bitmap.SetPixel(x, y, new SkiaSharp.SKColor((byte)(5 * x), (byte)(5 * x), (byte)(5 * x)));
                using var data = bitmap.Encode(SkiaSharp.SKEncodedImageFormat.Png, 100);
                File.WriteAllBytes(path, data.ToArray());
            }
            var transform = ImageNetTransform.ForCrop(16) with { Normalization = new Normalization(new[] { 0f, 0f, 0f }, new[] { 1f, 1f, 1f }) };
            var loaded = new float[3 * 16 * 16];
            transform.Load(path, null, loaded);
            var expected = new byte[3 * 16 * 16];
            using (var image = Microsoft.ML.Data.MLImage.CreateFromFile(path))
                ImagePixels.ToInput(image, transform.CentreCrop, 16, expected);
            for (int i = 0; i < loaded.Length; i++) Assert.AreEqual(expected[i] / 255f, loaded[i], 1e-6f, $"value {i}");
            for (int p = 0; p < 256; p++)
                Assert.IsTrue(loaded[p] == loaded[256 + p] && loaded[p] == loaded[512 + p], $"pixel {p}: the planes of a grayscale image differ");
            Assert.IsTrue(loaded[15] > loaded[0], "the gradient along x survived");
        }
        finally { Directory.Delete(dir, true); }
    }

    [TestMethod]
    public void RandomResizedCropStaysInsideTheImageAndCentreCropIsCentred()
    {
        var random = new Random(1);
        for (int i = 0; i < 500; i++)
        {
            var (x, y, w, h) = ImageNetTransform.RandomResizedCrop(96, 80, random);
            Assert.IsTrue(x >= 0 && y >= 0 && w > 0 && h > 0 && x + w <= 96 && y + h <= 80);
            double ratio = (double)w / h;
            Assert.IsTrue(ratio > 0.7 && ratio < 1.4, $"ratio {ratio}");
        }
        // 500×375 resized to 256 on the short side is 341×256; its centre 224 square is 224/256·375 = 328 source pixels.
        Assert.AreEqual((86, 23, 328, 328), ImageNetTransform.Standard.CentreCrop(500, 375));
    }

    // manml train on the ImageNet layout: ResNet-18 at 64×64, K=2, InfoPro + MAN, one epoch; metrics carry top-5.
    [TestMethod]
    [TestCategory("Slow")]
    public void TrainCommandTrainsOnTheImageNetLayout()
    {
        var outDir = TestSupport.NewTempFolder();
        var run = TestSupport.RunManml(new[]
        {
            "train", "--data", ImageNetFixture.Root, "--arch", "resnet18", "--image-size", "64", "--k", "2", "--rule", "infopro", "--man",
            "--epochs", "1", "--batch-size", "8", "--out", outDir,
        });
        Assert.AreEqual(0, run.ExitCode, run.Stdout + run.Stderr);
        var metrics = JsonNode.Parse(File.ReadAllText(Path.Combine(outDir, "metrics.json")))!;
        Assert.AreEqual("imagenet", metrics["config"]!["dataset"]!.GetValue<string>());
        Assert.AreEqual(64, metrics["config"]!["image_size"]!.GetValue<int>());
        Assert.AreEqual(4, metrics["config"]!["classes"]!.GetValue<int>());
        var top5 = metrics["final"]!["val_top5_accuracy"]!.GetValue<double>();
        Assert.AreEqual(1.0, top5, "with four classes every label is in the top five");
        Assert.IsTrue(metrics["epochs"]![0]!["data_wait_seconds"]!.GetValue<double>() >= 0);
        var bad = TestSupport.RunManml(new[] { "train", "--data", outDir, "--arch", "resnet18", "--out", TestSupport.NewTempFolder() });
        Assert.AreEqual(2, bad.ExitCode);
        StringAssert.Contains(bad.Stderr + bad.Stdout, "train");
    }
}
