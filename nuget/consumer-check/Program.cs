// The consumer check: train for one epoch through the ML.NET API on an image folder, evaluate, save, load in a fresh
// MLContext, check the reloaded model scores the same, and predict one image through a PredictionEngine.
// Usage: ConsumerCheck TRAIN_FOLDER VALIDATION_FOLDER OUT_FOLDER   (each image folder holds one folder per class)
using Man.ML.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;

if (args.Length != 3)
{
    Console.Error.WriteLine("usage: ConsumerCheck TRAIN_FOLDER VALIDATION_FOLDER OUT_FOLDER");
    return 2;
}
var trainRows = ListImages(args[0]);
var validationRows = ListImages(args[1]);
Directory.CreateDirectory(args[2]);
var manAssembly = typeof(ManImageClassificationTrainer).Assembly;
Console.WriteLine($"Man.ML {manAssembly.GetName().Version} loaded from {manAssembly.Location}");

var mlContext = new MLContext(seed: 0);
var trainData = mlContext.Data.LoadFromEnumerable(trainRows);
var validationData = mlContext.Data.LoadFromEnumerable(validationRows);
var pipeline = mlContext.Transforms.Conversion.MapValueToKey("Label")
    .Append(mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImageRow.ImagePath)))
    .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
    {
        Architecture = "resnet8", K = 2, UseMan = true, Epochs = 1, BatchSize = 64, Seed = 1,
        MetricsCallback = e => Console.WriteLine($"epoch {e.Epoch}: train loss {e.TrainLoss:F4}, train accuracy {e.TrainAccuracy:P1}"),
    }))
    .Append(mlContext.Transforms.Conversion.MapKeyToValue("PredictedLabelValue", "PredictedLabel"));
var model = pipeline.Fit(trainData);
Console.WriteLine($"trained on {trainRows.Count} images");

var metrics = mlContext.MulticlassClassification.Evaluate(model.Transform(validationData));
Console.WriteLine($"evaluated {validationRows.Count} images: micro-accuracy {metrics.MicroAccuracy:F4}, log-loss {metrics.LogLoss:F4}");

var path = Path.Combine(args[2], "model.manml.zip");
mlContext.Model.SaveManModel(model, trainData.Schema, path);
Console.WriteLine($"saved {path} ({new FileInfo(path).Length} bytes)");

var fresh = new MLContext(seed: 1);
var loaded = fresh.Model.LoadManModel(path, out var inputSchema);
Console.WriteLine($"loaded {path} (input columns: {string.Join(", ", inputSchema.Select(c => c.Name))})");
var before = ScoreBits(model, validationData);
var after = ScoreBits(loaded, fresh.Data.LoadFromEnumerable(validationRows));
bool identical = before.SequenceEqual(after);
Console.WriteLine($"reloaded model scores {before.Count} images bit for bit identically: {identical}");

using var engine = fresh.Model.CreatePredictionEngine<ImageRow, ImagePrediction>(loaded);
var example = validationRows[0];
var prediction = engine.Predict(example);
Console.WriteLine($"predicted '{prediction.PredictedLabelValue}' (probability {prediction.Score.Max():P1}) for {example.ImagePath}, labelled '{example.Label}'");
return identical ? 0 : 1;

static List<ImageRow> ListImages(string folder)
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

static List<string> ScoreBits(ITransformer model, IDataView data) =>
    model.Transform(data).GetColumn<VBuffer<float>>("Score")
        .Select(v => string.Join(",", v.DenseValues().Select(f => BitConverter.SingleToInt32Bits(f).ToString("x8")))).ToList();

/// <summary>One image: its path and its class (the name of its folder).</summary>
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
