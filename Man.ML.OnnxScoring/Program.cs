// manml-onnx-score: scores an image folder (DIR/<class>/*.png|jpg) with a model Man.ML exported to ONNX, through an
// ML.NET pipeline and ONNX Runtime alone: a CustomMapping that decodes each image and crops and resizes it exactly as
// Man.ML's transformer does (ImagePixels, the same source file), then ApplyOnnxModel. The image size, the recipe and the
// class names come from the model's metadata. Prints accuracy and images/s; --scores-out writes every image's scores
// with their exact float bits, for comparison with Man.ML's own scoring (manml score-model).
using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Man.ML.Data;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.Transforms;

var modelOption = new Option<string>("--model") { Description = "An ONNX model exported by Man.ML (SaveAsOnnx or manml export-onnx).", Required = true };
var imagesOption = new Option<string>("--images") { Description = "Folder of class folders of images.", Required = true };
var scoresOption = new Option<string?>("--scores-out") { Description = "Write every image's path, scores (exact float bits) and predicted class as JSON." };
var roundsOption = new Option<int>("--rounds")
{
    Description = "Timed scoring passes after one warm-up pass (the median is reported).", DefaultValueFactory = _ => 3,
};
var maxPixelsOption = new Option<long>("--max-image-pixels")
{
    Description = "Refuse an image file of more pixels (width x height), read from its header before decoding (default 8192x8192).",
    DefaultValueFactory = _ => ImageHeader.DefaultMaxPixels,
};
var root = new RootCommand("Score an image folder with a Man.ML model exported to ONNX, without TorchSharp or libtorch.")
{
    modelOption, imagesOption, scoresOption, roundsOption, maxPixelsOption,
};
root.SetAction(parse =>
{
    try
    {
        return Scoring.Run(parse.GetValue(modelOption)!, parse.GetValue(imagesOption)!, parse.GetValue(scoresOption), parse.GetValue(roundsOption),
            parse.GetValue(maxPixelsOption));
    }
    catch (Exception e) when (UserError(e) is { } error)
    {
        Console.Error.WriteLine($"manml-onnx-score: error: {error.Message.ReplaceLineEndings(" ")}");
        return 2;
    }
});
return root.Parse(args).Invoke();

// ML.NET wraps an exception of the mapping (an image that cannot be decoded, or over the limit) in its own: the user's
// error is the first one inside that says what is wrong with the input.
static Exception? UserError(Exception e)
{
    for (Exception? inner = e; inner is not null; inner = inner.InnerException)
        if (inner is FileNotFoundException or DirectoryNotFoundException or InvalidDataException or OnnxRuntimeException or ArgumentException
            or IOException)
            return inner;
    return null;
}

/// <summary>One image file and its class folder.</summary>
internal sealed class ImageFile
{
    public string ImagePath { get; set; } = "";
    public string Label { get; set; } = "";
}

/// <summary>The network's input for one image: planar RGB in 0..255 (its size is set on the schema at run time).</summary>
internal sealed class ImagePixelsRow
{
    public float[] Pixels { get; set; } = Array.Empty<float>();
}

internal static class Scoring
{
    public static int Run(string modelPath, string imageFolder, string? scoresPath, int rounds, long maxPixels)
    {
        if (!File.Exists(modelPath)) throw new FileNotFoundException($"Model '{modelPath}' does not exist.", modelPath);
        if (rounds < 1) throw new ArgumentException($"--rounds must be at least 1 (got {rounds}).");
        if (maxPixels < 1) throw new ArgumentException($"--max-image-pixels must be at least 1 (got {maxPixels}).");
        var (classes, size, imageNetRecipe) = ReadMetadata(modelPath);
        var rows = ListImages(imageFolder);

        var ml = new MLContext(seed: 0);
        var outputSchema = SchemaDefinition.Create(typeof(ImagePixelsRow));
        outputSchema[nameof(ImagePixelsRow.Pixels)].ColumnType = new VectorDataViewType(NumberDataViewType.Single, 3 * size * size);
        int resize = ImagePixels.ResizeFor(size);
        // ML.NET may call the mapping from several threads at once: every buffer is the call's own.
        void Preprocess(ImageFile input, ImagePixelsRow output)
        {
            var pixels = new byte[3 * size * size];
            using (var image = ImageHeader.DecodeFile(input.ImagePath, maxPixels))
                ImagePixels.ToInput(image, imageNetRecipe ? (w, h) => ImagePixels.CentreCrop(size, resize, w, h) : null, size, pixels);
            var values = new float[pixels.Length];
            for (int i = 0; i < pixels.Length; i++) values[i] = pixels[i];
            output.Pixels = values;
        }

        var pipeline = ml.Transforms.CustomMapping<ImageFile, ImagePixelsRow>(Preprocess, contractName: null, outputSchemaDefinition: outputSchema)
            .Append(ml.Transforms.ApplyOnnxModel(new[] { "Score" }, new[] { "Pixels" }, modelPath,
                shapeDictionary: new Dictionary<string, int[]> { ["Pixels"] = new[] { 1, 3, size, size } },
                    gpuDeviceId: null, fallbackToCpu: false, recursionLimit: 100));
        var data = ml.Data.LoadFromEnumerable(rows);
        using var model = (IDisposable)pipeline.Fit(data);
        var transformer = (ITransformer)model;

        float[][] scores = Array.Empty<float[]>();
        var seconds = new List<double>();
        for (int round = 0; round <= rounds; round++)
        {
            var clock = Stopwatch.StartNew();
            scores = transformer.Transform(data).GetColumn<VBuffer<float>>("Score").Select(v => v.DenseValues().ToArray()).ToArray();
            if (round > 0) seconds.Add(clock.Elapsed.TotalSeconds); // round 0 warms up ONNX Runtime
        }
        if (scores.Any(s => s.Length != classes.Length))
            throw new InvalidDataException($"The model gives {scores[0].Length} scores per image; its metadata names {classes.Length} classes.");

        var predicted = scores.Select(s => classes[Array.IndexOf(s, s.Max())]).ToArray();
        int correct = rows.Where((r, i) => predicted[i] == r.Label).Count();
        seconds.Sort();
        double median = seconds[seconds.Count / 2];
        Console.WriteLine($"{rows.Count} images, {classes.Length} classes, input {size}x{size} ({(imageNetRecipe ? "ImageNet" : "CIFAR")} recipe)");
        Console.WriteLine($"accuracy {100.0 * correct / rows.Count:F2} % ({correct}/{rows.Count})");
        Console.WriteLine($"scoring {rows.Count / median:F1} images/s (median of {rounds} passes: decode, crop, resize, ApplyOnnxModel one image at a time)");
        if (scoresPath is not null)
        {
            var json = JsonSerializer.Serialize(new
            {
                images = rows.Select(r => r.ImagePath).ToArray(),
                scores = scores.Select(s => s.Select(f => BitConverter.SingleToInt32Bits(f).ToString("x8")).ToArray()).ToArray(),
                predicted,
                images_per_second = rows.Count / median,
            });
            var temp = scoresPath + ".tmp";
            File.WriteAllText(temp, json);
            File.Move(temp, scoresPath, overwrite: true);
        }
        return 0;
    }

    private static (string[] Classes, int Size, bool ImageNetRecipe) ReadMetadata(string modelPath)
    {
        using var session = new InferenceSession(modelPath);
        var map = session.ModelMetadata.CustomMetadataMap;
        string Get(string key) => map.TryGetValue(key, out var v) ? v
            : throw new InvalidDataException($"Model '{modelPath}' has no '{key}' metadata: export it with Man.ML (SaveAsOnnx or manml export-onnx).");
        var classes = JsonSerializer.Deserialize<string[]>(Get("manml.classes")) ?? Array.Empty<string>();
        if (!int.TryParse(Get("manml.image_size"), out int size) || size < 8)
            throw new InvalidDataException($"Model '{modelPath}': manml.image_size '{Get("manml.image_size")}' is not an image size.");
        var recipe = Get("manml.recipe");
        if (recipe is not ("cifar" or "imagenet")) throw new InvalidDataException($"Model '{modelPath}': unknown manml.recipe '{recipe}'.");
        return (classes, size, recipe == "imagenet");
    }

    private static List<ImageFile> ListImages(string folder)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"Image folder '{folder}' does not exist.");
        var extensions = new[] { ".jpg", ".jpeg", ".png", ".bmp" };
        var rows = Directory.GetDirectories(folder).OrderBy(d => d, StringComparer.Ordinal)
            .SelectMany(d => Directory.GetFiles(d).Where(f => extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                .OrderBy(f => f, StringComparer.Ordinal)
                .Select(f => new ImageFile { ImagePath = Path.GetFullPath(f), Label = Path.GetFileName(d) }))
            .ToList();
        if (rows.Count == 0) throw new FileNotFoundException($"Image folder '{folder}' holds no class folders with images.");
        return rows;
    }
}
