// manml score-model: scores every image of a folder with a saved Man.ML model (an ML.NET model zip, or manml train's
// model.ckpt through the transformer its recipe, normalisation and classes make) and prints the scores as JSON, each
// float with its exact bits, so another process (another load, or ONNX Runtime with the exported graph) can check that
// the model scores identically.
using System.CommandLine;
using System.Text.Json;
using Man.ML.MLNet;
using Man.ML.Samples.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.Samples.Cli;

internal static class ScoreModelCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "A model saved with SaveManModel (.zip), or manml train's DIR/model.ckpt.", Required = true };
        var images = new Option<string>("--images") { Description = "Folder of class folders.", Required = true };
        var maxPixels = CommonOptions.MaxImagePixels();
        var command = new Command("score-model", "Score an image folder with a saved model; prints scores (with exact float bits) as JSON.")
        {
            model, images, maxPixels,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var mlContext = new MLContext(0);
            var path = parse.GetValue(model)!;
            InputFiles.CheckRegular(path, "Model");
            var loaded = ModelFiles.IsZip(path) ? mlContext.Model.LoadManModel(path, out _)
                // A checkpoint holds the network alone: the images are loaded as the ML.NET sample's pipeline does.
                : new TransformerChain<ITransformer>(
                    mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImageRow.ImagePath))
                        .Fit(mlContext.Data.LoadFromEnumerable(new List<ImageRow>())),
                    ManImageClassificationTransformer.FromCheckpoint(path, "Image"));
            ModelFiles.NoteUnverified(path, ModelFiles.Find(loaded)?.Verified ?? true);
            long limit = CommonOptions.GetMaxImagePixels(parse, maxPixels);
            var rows = ImageFolderSample.ListImages(parse.GetValue(images)!);
            CommonOptions.CheckImageFiles(rows.Select(r => r.ImagePath), limit);
            foreach (var transformer in (loaded as IEnumerable<ITransformer> ?? new[] { loaded }).OfType<ManImageClassificationTransformer>())
                transformer.MaxImagePixels = limit;
            var scored = loaded.Transform(mlContext.Data.LoadFromEnumerable(rows));
            string[][] scores = Array.Empty<string[]>();
            double seconds = 0;
            for (int pass = 0; pass < 2; pass++) // the first pass warms up; the second is timed (decode, crop, resize, score)
            {
                var clock = System.Diagnostics.Stopwatch.StartNew();
                scores = scored.GetColumn<VBuffer<float>>("Score")
                    .Select(v => v.DenseValues().Select(f => BitConverter.SingleToInt32Bits(f).ToString("x8")).ToArray()).ToArray();
                seconds = clock.Elapsed.TotalSeconds;
            }
            var schema = scored.Schema;
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                score_type = schema["Score"].Type.ToString(),
                predicted_label_type = schema["PredictedLabel"].Type.ToString(),
                images = rows.Select(r => r.ImagePath).ToArray(),
                scores,
                images_per_second = rows.Count / seconds,
            }));
            return 0;
        }));
        return command;
    }
}
