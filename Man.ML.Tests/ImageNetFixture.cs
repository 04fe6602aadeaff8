using SkiaSharp;

namespace Man.ML.Tests;

/// <summary>
/// A small ImageNet-layout folder of real JPEGs, made once per test run: 4 classes of the bundled CIFAR-10 sample,
/// upscaled to 96×80 (not square, so crops matter).
/// train/&lt;class&gt;/*.JPEG holds 6 images per class; val/ is flat (*.JPEG, 2 per class) with val_labels.txt beside it.
/// </summary>
internal static class ImageNetFixture
{
    public const int PerClassTrain = 6, PerClassVal = 2, Width = 96, Height = 80;
    public static readonly string[] Classes = { "n01000001", "n01000002", "n01000003", "n01000004" };
    private static readonly Lazy<string> Folder = new(Create);

    public static string Root => Folder.Value;

    private static string Create()
    {
        var root = Path.Combine(Path.GetTempPath(), "manml-imagenet-" + Environment.ProcessId);
        if (Directory.Exists(root)) Directory.Delete(root, true);
        var sources = FromSample();
        var labels = new List<string>();
        for (int c = 0; c < Classes.Length; c++)
        {
            var trainDir = Path.Combine(root, "train", Classes[c]);
            Directory.CreateDirectory(trainDir);
            for (int i = 0; i < PerClassTrain + PerClassVal; i++)
            {
                bool train = i < PerClassTrain;
                string name = train ? $"{Classes[c]}_{i:D4}.JPEG" : $"ILSVRC_val_{c * PerClassVal + i - PerClassTrain:D8}.JPEG";
                var path = train ? Path.Combine(trainDir, name) : Path.Combine(root, "val", name);
                Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                using var source = sources[c][i];
                using var scaled = source.Resize(new SKImageInfo(Width, Height), new SKSamplingOptions(SKCubicResampler.Mitchell));
                using var data = scaled.Encode(SKEncodedImageFormat.Jpeg, 90);
                File.WriteAllBytes(path, data.ToArray());
                if (!train) labels.Add($"{Path.GetFileNameWithoutExtension(name)} {Classes[c]}");
            }
        }
        File.WriteAllLines(Path.Combine(root, "val_labels.txt"), labels);
        return root;
    }

    private static List<List<SKBitmap>> FromSample()
    {
        using var data = TestSupport.SampleImages(0, 400);
        var labels = data.Labels.data<long>().ToArray();
        return Enumerable.Range(0, Classes.Length).Select(c => Enumerable.Range(0, data.Count).Where(i => labels[i] == c)
            .Take(PerClassTrain + PerClassVal).Select(i =>
        {
            var planes = data.Images[i].data<byte>().ToArray();
            var bitmap = new SKBitmap(new SKImageInfo(32, 32, SKColorType.Rgba8888, SKAlphaType.Opaque));
            for (int p = 0; p < 1024; p++) bitmap.SetPixel(p % 32, p / 32, new SKColor(planes[p], planes[1024 + p], planes[2048 + p]));
            return bitmap;
        }).ToList()).ToList();
    }
}
