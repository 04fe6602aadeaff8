// The ML.NET sample: an image-folder data set (one folder per class) -> LoadImages -> Man.ML's trainer -> Evaluate ->
// save -> load in the same process -> PredictionEngine on one image. Run it with
//   dotnet run --project Man.ML.Samples -c Release -- image-folder --images "$MANML_CIFAR10_IMAGES" (docs/DATA.md)
using Man.ML.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.Samples.MLNet;

/// <summary>One image of the folder: its path and its class (the folder name).</summary>
public sealed class ImageRow
{
    public string ImagePath { get; set; } = "";
    public string Label { get; set; } = "";
}

/// <summary>What the pipeline predicts for one image.</summary>
public sealed class ImagePrediction
{
    public string PredictedLabelValue { get; set; } = "";
    public float[] Score { get; set; } = Array.Empty<float>();
}

public static class ImageFolderSample
{
    /// <summary>Lists DIR/&lt;class&gt;/*.{jpg,jpeg,png,bmp} as rows, classes in name order.</summary>
    public static List<ImageRow> ListImages(string folder)
    {
        if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"Image folder '{folder}' does not exist.");
        var extensions = new[] { ".jpg", ".jpeg", ".png", ".bmp" };
        var rows = Directory.GetDirectories(folder).OrderBy(d => d, StringComparer.Ordinal)
            .SelectMany(d => Directory.GetFiles(d).Where(f => extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
                .OrderBy(f => f, StringComparer.Ordinal)
                .Select(f => new ImageRow { ImagePath = Path.GetFullPath(f), Label = Path.GetFileName(d) }))
            .ToList();
        if (rows.Count == 0) throw new FileNotFoundException($"Image folder '{folder}' holds no class folders with images.");
        return rows;
    }

    /// <summary>Splits DIR into train/val: DIR/train and DIR/val when both exist, else every fifth image of each class for validation.</summary>
    public static (List<ImageRow> Train, List<ImageRow> Validation) LoadSplit(string folder)
    {
        string train = Path.Combine(folder, "train"), val = Path.Combine(folder, "val");
        if (Directory.Exists(train) && Directory.Exists(val)) return (ListImages(train), ListImages(val));
        var all = ListImages(folder);
        var held = all.GroupBy(r => r.Label).SelectMany(g => g.Where((_, i) => i % 5 == 4)).ToHashSet();
        return (all.Where(r => !held.Contains(r)).ToList(), all.Where(held.Contains).ToList());
    }

    public sealed record Outcome(double MicroAccuracy, double MacroAccuracy, double LogLoss, int TrainImages, int ValidationImages,
        string ModelPath, string OnnxPath, ImageRow Example, ImagePrediction Prediction, IReadOnlyList<(string Class, double Accuracy)> PerClass);

    /// <summary>The whole sample; <paramref name="log"/> receives progress lines.</summary>
    public static Outcome Run(string imagesFolder, string outFolder, ManImageClassificationTrainer.Options options, Action<string> log,
        int seed = 0)
    {
        var mlContext = new MLContext(seed);
        mlContext.Log += (_, e) => { if (e.Message.Contains("Man.ML")) log(e.Message); };

        var (trainRows, validationRows) = LoadSplit(imagesFolder);
        // LoadImages decodes with ML.NET's decoder, which no limit reaches: every file's header is checked first.
        foreach (var row in trainRows.Concat(validationRows)) Data.ImageHeader.CheckFile(row.ImagePath, options.MaxImagePixels);
        var trainData = mlContext.Data.LoadFromEnumerable(trainRows);
        var validationData = mlContext.Data.LoadFromEnumerable(validationRows);

        var preprocessing = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImageRow.ImagePath)));
        options.ValidationSet = preprocessing.Fit(trainData).Transform(validationData);
        var pipeline = preprocessing
            .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(options))
            .Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabelValue", "PredictedLabel"));
        var model = pipeline.Fit(trainData);

        var scored = model.Transform(validationData);
        var metrics = mlContext.MulticlassClassification.Evaluate(scored);
        var classes = trainRows.Select(r => r.Label).Distinct().OrderBy(c => c, StringComparer.Ordinal).ToList();
        var confusion = metrics.ConfusionMatrix;
        var perClass = classes.Select((c, i) => (c, confusion.PerClassRecall[i])).ToList();

        Directory.CreateDirectory(outFolder);
        var modelPath = Path.Combine(outFolder, "model.manml.zip");
        mlContext.Model.SaveManModel(model, trainData.Schema, modelPath);
        // The same model as an ONNX graph, for scoring without TorchSharp (Man.ML.OnnxScoring, ApplyOnnxModel).
        var onnxPath = Path.Combine(outFolder, "model.onnx");
        model.OfType<ManImageClassificationTransformer>().Single().SaveAsOnnx(onnxPath);
        var loaded = mlContext.Model.LoadManModel(modelPath, out _);
        using var engine = mlContext.Model.CreatePredictionEngine<ImageRow, ImagePrediction>(loaded);
        var example = validationRows[0];
        var prediction = engine.Predict(example);
        return new Outcome(metrics.MicroAccuracy, metrics.MacroAccuracy, metrics.LogLoss, trainRows.Count, validationRows.Count,
            modelPath, onnxPath, example, prediction, perClass);
    }
}
