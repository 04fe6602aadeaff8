using Man.ML.Data;
using Man.ML.Interop;
using Man.ML.MLNet;
using Man.ML.Samples.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using SkiaSharp;

namespace Man.ML.Tests;

/// <summary>
/// The documented ONNX route (OnnxPixels, then the exported graph) scores images of other sizes than the model's as
/// Man.ML's transformer does: 2,000 PNG and JPEG images from 17 to 97 pixels a side, a quarter of them 28×28 grayscale.
/// </summary>
[TestClass]
public sealed class OnnxRoutesTests
{
    private sealed class EncodedImage
    {
        public byte[] Image { get; set; } = Array.Empty<byte>();
    }

    private static List<byte[]> OtherSizes(int count)
    {
        using var sample = TestSupport.SampleImages(0, 500);
        var pixels = sample.Images.contiguous().data<byte>().ToArray(); // (N, 3, 32, 32)
        var random = new Random(7);
        var images = new List<byte[]>(count);
        for (int n = 0; n < count; n++)
        {
            int source = n % 500;
            using var bitmap = new SKBitmap(32, 32, SKColorType.Rgba8888, SKAlphaType.Opaque);
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++)
                {
                    int at = source * 3072 + y * 32 + x;
                    bitmap.SetPixel(x, y, new SKColor(pixels[at], pixels[at + 1024], pixels[at + 2048]));
                }
            bool gray = n % 4 == 0;
            int w = gray ? 28 : random.Next(17, 98), h = gray ? 28 : random.Next(17, 98);
            using var resized = bitmap.Resize(new SKImageInfo(w, h, gray ? SKColorType.Gray8 : SKColorType.Rgba8888, SKAlphaType.Opaque),
                new SKSamplingOptions(SKFilterMode.Linear));
            var format = gray || n % 2 == 0 ? SKEncodedImageFormat.Png : SKEncodedImageFormat.Jpeg;
            images.Add(resized.Encode(format, 90).ToArray());
        }
        return images;
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void TheDocumentedOnnxRouteAgreesWithTheTransformerOnImagesOfOtherSizes()
    {
        var folder = TestSupport.NewTempFolder();
        try
        {
            var mlContext = new MLContext(0);
            var train = mlContext.Data.LoadFromEnumerable(ImageFolderSample.ListImages(ImageFolderFixture.Train));
            using var model = mlContext.Transforms.Conversion.MapValueToKey("Label")
                .Append(mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImageRow.ImagePath)))
                .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
                {
                    Architecture = "resnet8", K = 2, Epochs = 2, BatchSize = 64, Seed = 3,
                }))
                .Fit(train);
            var man = model.LastTransformer;
            var onnxPath = Path.Combine(folder, "model.onnx");
            man.SaveAsOnnx(onnxPath);

            var images = OtherSizes(2000);
            var expected = man.Transform(mlContext.Data.LoadFromEnumerable(images.Select(i => new EncodedImage { Image = i })))
                .GetColumn<VBuffer<float>>(ManImageClassificationTransformer.ScoreColumnName).Select(v => v.DenseValues().ToArray()).ToList();

            using var session = new InferenceSession(onnxPath);
            var meta = session.ModelMetadata.CustomMetadataMap;
            int size = int.Parse(meta[OnnxExport.ImageSizeKey]);
            int classes = expected[0].Length, agree = 0;
            double largest = 0;
            for (int start = 0; start < images.Count; start += 250)
            {
                int n = Math.Min(250, images.Count - start);
                var input = new float[n * 3 * size * size];
                for (int i = 0; i < n; i++)
                    OnnxPixels.FromEncoded(images[start + i], size, ImageRecipe.Cifar).CopyTo(input, i * 3 * size * size);
                using var results = session.Run(new[] { NamedOnnxValue.CreateFromTensor(OnnxExport.InputName,
                    new DenseTensor<float>(input, new[] { n, 3, size, size })) });
                var scores = results.Single().AsEnumerable<float>().ToArray();
                for (int i = 0; i < n; i++)
                {
                    var e = expected[start + i];
                    var a = scores.AsSpan(i * classes, classes).ToArray();
                    largest = Math.Max(largest, e.Zip(a, (p, q) => Math.Abs(p - q)).Max());
                    if (Array.IndexOf(e, e.Max()) == Array.IndexOf(a, a.Max())) agree++;
                }
            }
            Console.WriteLine($"OnnxPixels + ONNX Runtime against the transformer: top-1 agrees on {agree} of {images.Count}, " +
                              $"largest probability difference {largest:E2}");
            Assert.IsTrue(agree >= 0.999 * images.Count, $"top-1 agrees on only {agree} of {images.Count}");
            Assert.IsTrue(largest <= 1e-3, $"probabilities differ by up to {largest:E2}");
            Assert.ThrowsExactly<ArgumentException>(() => OnnxPixels.FromEncoded(images[0], size, ImageRecipe.Automatic));
            Assert.ThrowsExactly<InvalidDataException>(() => OnnxPixels.FromEncoded("not an image"u8.ToArray(), size, ImageRecipe.Cifar));
        }
        finally { Directory.Delete(folder, true); }
    }
}
