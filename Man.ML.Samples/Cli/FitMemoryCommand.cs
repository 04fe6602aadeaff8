// manml measure fit-memory (formerly measure-fit-memory): the peak resident memory of one ML.NET Fit over an image folder repeated to --rows rows
// (LoadFromEnumerable -> MapValueToKey -> LoadImages -> ManImageClassification), printed as one JSON object. Run it once
// per row count, each in its own process, with MALLOC_MMAP_THRESHOLD_=65536 so freed buffers go back to the system
// and the peak is what Fit held (docs/BENCHMARKS.md, "Streaming Fit").
using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Man.ML.Diagnostics;
using Man.ML.Local;
using Man.ML.MLNet;
using Man.ML.Samples.MLNet;
using Microsoft.ML;

namespace Man.ML.Samples.Cli;

internal static class FitMemoryCommand
{
    public static Command Create()
    {
        var images = new Option<string>("--images") { Description = "Folder of class folders (DIR/<class>/<image>).", Required = true };
        var rows = new Option<int>("--rows")
        {
            Description = "Rows of the training view: the folder's images repeated (in turn) to this many.", DefaultValueFactory = _ => 2000,
        };
        var size = new Option<int>("--image-size") { Description = "Network input side S.", DefaultValueFactory = _ => 64 };
        var arch = CommonOptions.Arch();
        var k = CommonOptions.K();
        var rule = CommonOptions.Rule();
        var man = new Option<bool>("--man") { Description = "Add MAN." };
        var batch = CommonOptions.BatchSize();
        var stopAfter = new Option<int>("--stop-after-batches")
        {
            Description = "Cancel Fit after this many training batches (0: train the whole epoch). Every row is still scanned and the " +
                          "normalisation measured first.",
        };
        var command = new Command("measure-fit-memory",
            "Peak resident memory of one ML.NET Fit (one epoch) over an image folder repeated to --rows rows; prints JSON.")
        {
            images, rows, size, arch, k, rule, man, batch, stopAfter,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            int n = parse.GetValue(rows);
            if (n < 2) throw new CliException("--rows must be at least 2.");
            var listed = ImageFolderSample.ListImages(parse.GetValue(images)!);
            CommonOptions.CheckImageFiles(listed.Select(r => r.ImagePath), Training.TrainingOptions.DefaultMaxImagePixels); // before LoadImages decodes
            var repeated = Enumerable.Range(0, n).Select(i => listed[i % listed.Count]).ToList();
            using var cancel = new CancellationTokenSource();
            int batches = 0;
            var mlContext = new MLContext(0);
            var data = mlContext.Data.LoadFromEnumerable(repeated);
            var pipeline = mlContext.Transforms.Conversion.MapValueToKey("Label")
                .Append(mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImageRow.ImagePath)))
                .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
                {
                    Architecture = parse.GetValue(arch)!, ImageSize = parse.GetValue(size), K = parse.GetValue(k),
                    Rule = Choices.Parse<LearningRule>(parse.GetValue(rule)!, "--rule"), UseMan = parse.GetValue(man),
                    Epochs = 1, BatchSize = parse.GetValue(batch), CancellationToken = cancel.Token,
                    ProgressCallback = progress => { batches = progress.Batch; if (progress.Batch == parse.GetValue(stopAfter)) cancel.Cancel(); },
                }));
            GC.Collect();
            long before = ProcessMemory.ResidentBytes();
            ProcessMemory.ResetPeak();
            var clock = Stopwatch.StartNew();
            bool completed = true;
            try { pipeline.Fit(data).Dispose(); }
            catch (OperationCanceledException) when (cancel.IsCancellationRequested) { completed = false; }
            double seconds = clock.Elapsed.TotalSeconds;
            long peak = ProcessMemory.PeakResidentBytes();
            int s = parse.GetValue(size);
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                rows = n,
                image_size = s,
                arch = parse.GetValue(arch),
                k = parse.GetValue(k),
                rule = parse.GetValue(rule),
                man = parse.GetValue(man),
                batch_size = parse.GetValue(batch),
                resident_before_fit_mb = Math.Round(before / 1048576.0, 1),
                peak_resident_mb = Math.Round(peak / 1048576.0, 1),
                peak_above_before_fit_mb = Math.Round((peak - before) / 1048576.0, 1),
                all_rows_as_uint8_mb = Math.Round((double)n * 3 * s * s / 1048576.0, 1),
                fit_seconds = Math.Round(seconds, 1),
                training_batches = batches,
                epoch_completed = completed,
                malloc_mmap_threshold_set = Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") is not null,
            }));
            return 0;
        }));
        return command;
    }
}
