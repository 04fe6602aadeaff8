using Man.ML.Data;
using Microsoft.ML.Data;

namespace Man.ML.Tests;

/// <summary>
/// A small real image-folder data set written from the bundled CIFAR-10 sample: train/&lt;class&gt;/*.png (first 1,000
/// images) and val/&lt;class&gt;/*.png (last 200), made once per test run.
/// </summary>
internal static class ImageFolderFixture
{
    private static readonly Lazy<string> Folder = new(Create);

    public static string Root => Folder.Value;
    public static string Train => Path.Combine(Root, "train");
    public static string Validation => Path.Combine(Root, "val");

    private static string Create()
    {
        var root = Path.Combine(Path.GetTempPath(), "manml-image-folder-" + Environment.ProcessId);
        if (Directory.Exists(root)) Directory.Delete(root, true);
        using var data = CifarBinary.Read(new[] { TestSupport.BundledSample });
        Write(data, 0, 1000, Path.Combine(root, "train"));
        Write(data, data.Count - 200, 200, Path.Combine(root, "val"));
        return root;
    }

    private static void Write(LabeledImages data, int start, int count, string folder)
    {
        var labels = data.Labels.data<long>().ToArray();
        for (int i = start; i < start + count; i++)
        {
            var planes = data.Images[i].data<byte>().ToArray();  // (3, 32, 32) planar RGB
            var rgba = new byte[32 * 32 * 4];
            for (int p = 0; p < 1024; p++)
            {
                rgba[4 * p] = planes[p];
                rgba[4 * p + 1] = planes[1024 + p];
                rgba[4 * p + 2] = planes[2048 + p];
                rgba[4 * p + 3] = 255;
            }
            var classFolder = Path.Combine(folder, data.ClassNames[(int)labels[i]]);
            Directory.CreateDirectory(classFolder);
            using var image = MLImage.CreateFromPixels(32, 32, MLPixelFormat.Rgba32, rgba);
            image.Save(Path.Combine(classFolder, $"{i:D4}.png"));
        }
    }
}
