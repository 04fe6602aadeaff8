using System.Buffers.Binary;
using System.IO.Compression;
using Man.ML.Data;
using Man.ML.MLNet;
using Man.ML.Samples.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.Tests;

/// <summary>
/// Every path that decodes an image reads its size from the header first and refuses one over the pixel limit, naming
/// the file (or the row and the file) and the limit; a file that is only a header is one clear error naming it.
/// </summary>
[TestClass]
public sealed class ImageLimitTests
{
    private static TestSupport.TempDir dir = null!;
    private static string oversized = null!, headerOnly = null!, notAnImage = null!, medium = null!;

    [ClassInitialize]
    public static void Create(TestContext _)
    {
        dir = new TestSupport.TempDir();
        // 9000×9000 (81 Mpixels, over the default 8192×8192) of zeros: 170 KB on disk, 324 MB decoded.
        oversized = Path.Combine(dir.Path, "big", "cat", "huge.png");
        WritePng(oversized, 9000, 9000);
        headerOnly = Path.Combine(dir.Path, "header", "cat", "header.png");
        WritePng(headerOnly, 20000, 20000, headerOnly: true);
        notAnImage = Path.Combine(dir.Path, "text", "cat", "notes.png");
        Directory.CreateDirectory(Path.GetDirectoryName(notAnImage)!);
        File.WriteAllText(notAnImage, "this is not an image");
        medium = Path.Combine(dir.Path, "medium", "cat", "medium.png");
        Directory.CreateDirectory(Path.GetDirectoryName(medium)!);
        using (var image = MLImage.CreateFromPixels(300, 300, MLPixelFormat.Rgba32, Enumerable.Repeat((byte)128, 300 * 300 * 4).ToArray()))
            image.Save(medium);
        // The ImageNet layout, for manml train --dataset imagenet.
        var inet = Path.Combine(dir.Path, "inet", "train");
        Directory.CreateDirectory(Path.Combine(inet, "cat"));
        File.Copy(oversized, Path.Combine(inet, "cat", "huge.png"));
        // A second class beside each bad image, so the folders are data sets.
        foreach (var small in new[] { "big", "header", "text", "medium", "inet/train" }.Select(set => Path.Combine(dir.Path, set, "dog", "small.png"))
                     .Append(Path.Combine(inet, "dog", "small2.png")))
        {
            Directory.CreateDirectory(Path.GetDirectoryName(small)!);
            using var image = MLImage.CreateFromPixels(32, 32, MLPixelFormat.Rgba32, new byte[32 * 32 * 4]);
            image.Save(small);
        }
    }

    [ClassCleanup]
    public static void Delete() => dir.Dispose();

    // An RGB PNG of zeros written row by row (the IDAT compresses 1000-fold), or its signature and IHDR alone.
    private static void WritePng(string path, int width, int height, bool headerOnly = false)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var file = File.Create(path);
        file.Write(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G', 13, 10, 26, 10 });
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = 8;  // bit depth
        ihdr[9] = 2;  // RGB
        Chunk(file, "IHDR", ihdr);
        if (headerOnly) return;
        var compressed = new MemoryStream();
        using (var z = new ZLibStream(compressed, CompressionLevel.SmallestSize, leaveOpen: true))
        {
            var row = new byte[1 + 3 * width];
            for (int y = 0; y < height; y++) z.Write(row);
        }
        Chunk(file, "IDAT", compressed.ToArray());
        Chunk(file, "IEND", Array.Empty<byte>());
    }

    private static void Chunk(Stream file, string type, byte[] data)
    {
        var header = new byte[8];
        BinaryPrimitives.WriteInt32BigEndian(header, data.Length);
        System.Text.Encoding.ASCII.GetBytes(type, header.AsSpan(4));
        file.Write(header);
        file.Write(data);
        uint crc = Crc32(header.AsSpan(4), 0xFFFFFFFF);
        crc = Crc32(data, crc) ^ 0xFFFFFFFF;
        var tail = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(tail, crc);
        file.Write(tail);
    }

    private static uint Crc32(ReadOnlySpan<byte> bytes, uint crc)
    {
        foreach (byte b in bytes)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? 0xEDB88320 ^ (crc >> 1) : crc >> 1;
        }
        return crc;
    }

    private static void AssertLimitMessage(string message, string path, string size, string limit)
    {
        StringAssert.Contains(message, path);
        StringAssert.Contains(message, $"the image is {size}");
        StringAssert.Contains(message, $"more than the limit of {limit} pixels");
        StringAssert.Contains(message, "--max-image-pixels");
    }

    [TestMethod]
    public void TheHeaderGivesTheSizeWithoutDecoding()
    {
        using var stream = File.OpenRead(oversized);
        Assert.AreEqual((9000, 9000), ImageHeader.ReadSize(stream));
        Assert.AreEqual(0, stream.Position, "the stream is left where it was");
    }

    [TestMethod]
    public void TheImageFileLoaderRefusesAnOversizedImageAndAHeaderAlone()
    {
        var pixels = new float[3 * 32 * 32];
        var transform = ImageNetTransform.ForCrop(32);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => transform.Load(oversized, null, pixels));
        AssertLimitMessage(e.Message, oversized, "9000x9000 (81,000,000 pixels)", "67,108,864");
        var h = Assert.ThrowsExactly<InvalidDataException>(() => transform.Load(headerOnly, null, pixels));
        Assert.AreEqual($"Image '{headerOnly}': the file is truncated: it ends before the image data.", h.Message);
        var n = Assert.ThrowsExactly<InvalidDataException>(() => transform.Load(notAnImage, null, pixels));
        StringAssert.Contains(n.Message, $"Image '{notAnImage}': it is not a JPEG, PNG, BMP, GIF or WebP image");

        // The limit is the caller's: a 300×300 image is refused at 50,000 pixels and accepted at the default.
        var m = Assert.ThrowsExactly<InvalidDataException>(() => (transform with { MaxPixels = 50_000 }).Load(medium, null, pixels));
        AssertLimitMessage(m.Message, medium, "300x300 (90,000 pixels)", "50,000");
        transform.Load(medium, null, pixels);
        Assert.AreEqual((128 / 255f - transform.Normalization.Mean[0]) / transform.Normalization.Std[0], pixels[0], 1e-5f);

        // The batch loader (training on an image folder) passes the file's error on.
        var set = ImageFileSet.ReadClassFolders(Path.Combine(dir.Path, "big"));
        var loader = new ImageBatchLoader(set, transform, workers: 1);
        var b = Assert.ThrowsExactly<InvalidDataException>(() =>
        {
            foreach (var (images, labels) in loader.Batches(new long[] { 0, 1 }, new[] { (0, 2) }, train: false, 0, 0))
            {
                images.Dispose();
                labels.Dispose();
            }
        });
        AssertLimitMessage(b.Message, oversized, "9000x9000", "67,108,864");
    }

    // A model that scores 32×32 images (untrained: only where the images fail matters).
    private static ManImageClassificationTransformer Model() =>
        new(Models.Architectures.Create("resnet8", 2, 32), LabelKeyValues.FromNames(new[] { "cat", "dog" }), Normalization.Cifar, "Image", 32, 4, "cpu",
            "test", ImageRecipe.Cifar);

    [TestMethod]
    public void ScoringRefusesOversizedImagesNamingRowAndFile()
    {
        var ml = new MLContext(0);
        using var model = Model();
        var big = ml.Data.LoadFromEnumerable(ImageFolderSample.ListImages(Path.Combine(dir.Path, "big")));
        // Encoded bytes: refused from the header, before decoding.
        var raw = ml.Transforms.LoadRawImageBytes("Image", "", nameof(ImageRow.ImagePath)).Fit(big).Transform(big);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => model.Transform(raw).GetColumn<VBuffer<float>>("Score").ToList());
        StringAssert.Contains(e.Message, "Image column 'Image', row 0");
        AssertLimitMessage(e.Message, $"(ImagePath = '{oversized}')", "9000x9000", "67,108,864");

        // LoadImages decodes with ML.NET's decoder; the transformer refuses the image before converting it.
        var mediumRows = ml.Data.LoadFromEnumerable(ImageFolderSample.ListImages(Path.Combine(dir.Path, "medium")));
        var loaded = ml.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)).Fit(mediumRows).Transform(mediumRows);
        Assert.AreEqual(2, model.Transform(loaded).GetColumn<VBuffer<float>>("Score").Count(), "accepted at the default limit");
        model.MaxImagePixels = 50_000;
        var m = Assert.ThrowsExactly<InvalidDataException>(() => model.Transform(loaded).GetColumn<VBuffer<float>>("Score").ToList());
        AssertLimitMessage(m.Message, $"(ImagePath = '{medium}')", "300x300", "50,000");
        // The PredictionEngine's row-by-row path alike.
        var engine = ml.Model.CreatePredictionEngine<ImageRow, ImagePrediction>(
            ml.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)).Fit(mediumRows).Append(model));
        var p = Assert.ThrowsExactly<InvalidDataException>(() => engine.Predict(new ImageRow { ImagePath = medium, Label = "cat" }));
        AssertLimitMessage(p.Message, $"(ImagePath = '{medium}')", "300x300", "50,000");
    }

    [TestMethod]
    public void ScoringNamesTheFileOfAnUndecodableImage()
    {
        var ml = new MLContext(0);
        using var model = Model();
        foreach (var (set, path, expected) in new[] { ("text", notAnImage, "not a JPEG"), ("header", headerOnly, "truncated") })
        {
            var rows = ml.Data.LoadFromEnumerable(ImageFolderSample.ListImages(Path.Combine(dir.Path, set)));
            var raw = ml.Transforms.LoadRawImageBytes("Image", "", nameof(ImageRow.ImagePath)).Fit(rows).Transform(rows);
            var e = Assert.ThrowsExactly<InvalidDataException>(() => model.Transform(raw).GetColumn<VBuffer<float>>("Score").ToList());
            StringAssert.Contains(e.Message, $"Image column 'Image', row 0 (ImagePath = '{path}')");
            StringAssert.Contains(e.Message, expected);
            var loaded = ml.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath)).Fit(rows).Transform(rows);
            var l = Assert.ThrowsExactly<InvalidDataException>(() => model.Transform(loaded).GetColumn<VBuffer<float>>("Score").ToList());
            StringAssert.Contains(l.Message, $"Image column 'Image', row 0 (ImagePath = '{path}')");
        }
    }

    [TestMethod]
    public void TheTrainerRefusesAnImageOverItsLimit()
    {
        var ml = new MLContext(0);
        var rows = ml.Data.LoadFromEnumerable(ImageFolderSample.ListImages(Path.Combine(dir.Path, "medium")));
        var pipeline = ml.Transforms.Conversion.MapValueToKey("Label")
            .Append(ml.Transforms.LoadRawImageBytes("Image", "", nameof(ImageRow.ImagePath)))
            .Append(ml.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
            {
                Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 2, MaxImagePixels = 50_000, CheckBackend = false,
            }));
        var e = Assert.ThrowsExactly<InvalidDataException>(() => pipeline.Fit(rows));
        AssertLimitMessage(e.Message, $"(ImagePath = '{medium}')", "300x300", "50,000");
        Assert.ThrowsExactly<InvalidOptionException>(() => new ManImageClassificationTrainer.Options { MaxImagePixels = 0 }.ToTrainingOptions().Validate());
    }

    [TestMethod]
    [TestCategory("Slow")] // child-process trainings
    public void TheCommandLineRefusesOversizedImagesBeforeDecodingThem()
    {
        using var run = new TestSupport.TempDir();
        var train = TestSupport.RunManml(new[]
        {
            "train", "--arch", "resnet8", "--k", "2", "--epochs", "1", "--train-limit", "16", "--val-split", "8",
            "--batch-size", "8", "--no-backend-check", "--out", run.Path,
        });
        Assert.AreEqual(0, train.ExitCode, train.Stderr);
        var model = Path.Combine(run.Path, "model.ckpt");
        foreach (var (args, expected) in new (string[] Args, string Expected)[]
        {
            (new[] { "score-model", "--model", model, "--images", Path.Combine(dir.Path, "big") },
                $"Image '{oversized}': the image is 9000x9000 (81,000,000 pixels), more than the limit of 67,108,864 pixels"),
            (new[] { "score-model", "--model", model, "--images", Path.Combine(dir.Path, "header") }, $"Image '{headerOnly}': the file is truncated"),
            (new[] { "score-model", "--model", model, "--images", Path.Combine(dir.Path, "text") }, $"Image '{notAnImage}': it is not a JPEG"),
            (new[] { "score-model", "--model", model, "--images", Path.Combine(dir.Path, "medium"), "--max-image-pixels", "50000" },
                $"Image '{medium}': the image is 300x300 (90,000 pixels), more than the limit of 50,000 pixels"),
            (new[] { "image-folder", "--images", Path.Combine(dir.Path, "big"), "--arch", "resnet8", "--k", "2", "--out", run.Path },
                $"Image '{oversized}': the image is 9000x9000"),
            (new[]
            {
                "train", "--dataset", "imagenet", "--data", Path.Combine(dir.Path, "inet"), "--arch", "resnet18", "--k", "2", "--image-size", "32",
                "--epochs", "1", "--batch-size", "2", "--val-split", "1", "--workers", "1", "--no-backend-check", "--out", run.Path,
            }, $"Image '{Path.Combine(dir.Path, "inet", "train", "cat", "huge.png")}': the image is 9000x9000"),
            (new[] { "score-model", "--model", model, "--images", Path.Combine(dir.Path, "medium"), "--max-image-pixels", "0" },
                "--max-image-pixels must be at least 1 (got 0)"),
        })
        {
            var r = TestSupport.RunManml(args);
            Assert.AreEqual(2, r.ExitCode, string.Join(" ", args) + ": " + r.Stderr);
            StringAssert.Contains(r.Stderr, expected);
            Assert.AreEqual(1, r.Stderr.Trim().Split('\n').Length, "one line of error:\n" + r.Stderr);
        }
        var accepted = TestSupport.RunManml(new[] { "score-model", "--model", model, "--images", Path.Combine(dir.Path, "medium") });
        Assert.AreEqual(0, accepted.ExitCode, accepted.Stderr);
        StringAssert.Contains(accepted.Stdout, medium);

        // The ONNX sample decodes the files itself, with the same check.
        var onnx = Path.Combine(run.Path, "model.onnx");
        Assert.AreEqual(0, TestSupport.RunManml(new[] { "export-onnx", "--model", model, "--out", onnx }).ExitCode);
        foreach (var (set, limit, expected) in new[]
        {
            ("big", "67108864", $"Image '{oversized}': the image is 9000x9000"), ("medium", "50000", $"Image '{medium}': the image is 300x300"),
            ("header", "67108864", $"Image '{headerOnly}': the file is truncated"),
        })
        {
            var r = TestSupport.Run("dotnet", new[]
            {
                OnnxExportTests.OnnxScoringDll(), "--model", onnx, "--images", Path.Combine(dir.Path, set), "--rounds", "1", "--max-image-pixels", limit,
            });
            Assert.AreEqual(2, r.ExitCode, r.Stderr);
            StringAssert.Contains(r.Stderr, expected);
            Assert.AreEqual(1, r.Stderr.Trim().Split('\n').Length, "one line of error:\n" + r.Stderr);
        }
    }

    [TestMethod]
    public void ATruncatedPngOrJpegIsRefusedWhereTheDecoderWouldFillItWithBlankPixels()
    {
        using var bitmap = new SkiaSharp.SKBitmap(48, 40);
        for (int y = 0; y < 40; y++)
            for (int x = 0; x < 48; x++) bitmap.SetPixel(x, y, new SkiaSharp.SKColor((byte)(x * 5), (byte)(y * 6), (byte)(x ^ y)));
        foreach (var (format, name) in new[] { (SkiaSharp.SKEncodedImageFormat.Png, "PNG"), (SkiaSharp.SKEncodedImageFormat.Jpeg, "JPEG") })
        {
            var whole = bitmap.Encode(format, 90).ToArray();
            using (var image = ImageHeader.Decode(new MemoryStream(whole), ImageHeader.DefaultMaxPixels))
                Assert.AreEqual(48, image.Width, $"the whole {name} decodes");
            // With padding after the trailer (some writers add it) the file is still whole.
            using (var padded = ImageHeader.Decode(new MemoryStream(whole.Concat(new byte[16]).ToArray()), ImageHeader.DefaultMaxPixels))
                Assert.AreEqual(40, padded.Height);
            foreach (var keep in new[] { whole.Length / 3, whole.Length * 2 / 3, whole.Length - 1 })
            {
                var e = Assert.ThrowsExactly<InvalidDataException>(() => ImageHeader.Decode(new MemoryStream(whole[..keep]), ImageHeader.DefaultMaxPixels),
                    $"{name} cut to {keep} of {whole.Length} bytes");
                StringAssert.Contains(e.Message, "truncated");
            }
        }
    }
}
