// manml-lab scoring-throughput: images per second scored through ML.NET's Transform against the engine scoring the same
// tensors directly (ResNet-32 by default, CIFAR images from --data, repeated to reach --images).
using System.CommandLine;
using Man.ML.Lab.Tooling;
using Man.ML.Samples.Cli;
using Man.ML.Data;
using Man.ML.MLNet;
using Microsoft.ML;
using Spectre.Console;

namespace Man.ML.Lab.Cli;

internal static class ScoringThroughputCommand
{
    private sealed class Row
    {
        [Microsoft.ML.Data.VectorType(3072)] public float[] Pixels { get; set; } = Array.Empty<float>();
        public uint Label { get; set; }
    }

    public static Command Create()
    {
        var data = new Option<string[]>("--data")
        {
            Description = "CIFAR-10 binary files (default: the bundled sample).", AllowMultipleArgumentsPerToken = true,
        };
        var images = new Option<int>("--images") { Description = "Images to score per round.", DefaultValueFactory = _ => 10000 };
        var arch = CommonOptions.Arch();
        var batch = CommonOptions.BatchSize("Scoring batch size of both paths.");
        var rounds = new Option<int>("--rounds") { Description = "Timed rounds of each path (median reported).", DefaultValueFactory = _ => 3 };
        var command = new Command("scoring-throughput", "Transform's scoring throughput against the engine scoring the same tensors.")
        {
            data, images, arch, batch, rounds,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            using var all = CifarBinary.Read(parse.GetValue(data) is { Length: > 0 } d ? d : new[] { TrainCommand.BundledSample });
            int n = parse.GetValue(images);
            if (n < 1) throw new CliException("--images must be positive.");
            if (parse.GetValue(batch) is var b && b < 1) throw new CliException($"--batch-size must be at least 1 (got {b}).");
            using var repeated = new LabeledImages(
                TorchSharp.torch.cat(Enumerable.Repeat(all.Images, (n + all.Count - 1) / all.Count).ToArray(), 0).narrow(0, 0, n).clone(),
                TorchSharp.torch.cat(Enumerable.Repeat(all.Labels, (n + all.Count - 1) / all.Count).ToArray(), 0).narrow(0, 0, n).clone(),
                all.ClassNames, all.Source);

            // A model to score with: one short end-to-end epoch on 256 images (throughput does not depend on the weights).
            var mlContext = new MLContext(0);
            var pixels = all.Images.narrow(0, 0, 256).to_type(TorchSharp.torch.ScalarType.Float32).reshape(256, 3072).data<float>().ToArray();
            var labels = all.Labels.narrow(0, 0, 256).data<long>().ToArray();
            var rows = Enumerable.Range(0, 256).Select(i => new Row { Pixels = pixels[(i * 3072)..((i + 1) * 3072)], Label = (uint)labels[i] }).ToList();
            var train = mlContext.Transforms.Conversion.MapValueToKey("Label").Fit(mlContext.Data.LoadFromEnumerable(rows))
                .Transform(mlContext.Data.LoadFromEnumerable(rows));
            var model = mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
            {
                ImageColumnName = "Pixels", Architecture = parse.GetValue(arch)!, K = 1, Rule = Man.ML.Local.LearningRule.EndToEnd, UseMan = false, Epochs = 1,
                ScoringBatchSize = parse.GetValue(batch),
            }).Fit(train);

            var report = ScoringThroughput.Measure(mlContext, model, repeated, parse.GetValue(rounds));
            var table = new Table()
                .Title($"{parse.GetValue(arch)} scoring {report.Images} CIFAR images, batch {report.BatchSize}, {TorchSharp.torch.get_num_threads()} threads")
                .AddColumns("path", "images/s (median)");
            table.AddRow("engine on tensors", report.EngineImagesPerSecond.ToString("0.0"));
            table.AddRow("ML.NET Transform", report.TransformImagesPerSecond.ToString("0.0"));
            AnsiConsole.Write(table);
            AnsiConsole.MarkupLine($"Transform / engine = [bold]{report.Ratio:0.000}[/]");
            return 0;
        }));
        return command;
    }
}
