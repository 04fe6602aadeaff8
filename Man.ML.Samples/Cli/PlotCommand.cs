// manml analyse plot: training curves (train and validation accuracy per epoch) of several runs in one PNG, as in the paper's
// Figure 2.
using System.CommandLine;
using System.Text.Json;
using Man.ML.Samples.Tooling;
using Man.ML.Diagnostics;

namespace Man.ML.Samples.Cli;

internal static class PlotCommand
{
    public static Command Create()
    {
        var runs = new Option<string[]>("--runs")
        {
            Description = "Run folders (each with metrics.json).", Required = true, AllowMultipleArgumentsPerToken = true,
        };
        var output = new Option<string>("--out") { Description = "PNG file to write.", DefaultValueFactory = _ => "curves.png" };
        var command = new Command("plot", "Training curves (train/validation accuracy per epoch) of several runs in one PNG.") { runs, output };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var series = new List<ChartSeries>();
            foreach (var dir in parse.GetValue(runs)!)
            {
                var root = CliErrors.ReadRunMetrics(dir);
                var name = Path.GetFileName(Path.TrimEndingDirectorySeparator(dir));
                var epochs = root.GetProperty("epochs").EnumerateArray().ToList();
                var x = epochs.Select(e => (double)e.GetProperty("epoch").GetInt32()).ToList();
                series.Add(new ChartSeries($"{name} train", x, epochs.Select(e => 100 * e.GetProperty("train_accuracy").GetDouble()).ToList()));
                series.Add(new ChartSeries($"{name} val", x, epochs.Select(e => e.GetProperty("val_accuracy").ValueKind == JsonValueKind.Number
                    ? 100 * e.GetProperty("val_accuracy").GetDouble() : double.NaN).ToList()));
            }
            var file = parse.GetValue(output)!;
            Charts.Line(file, "Accuracy per epoch", "epoch", "accuracy (%)", series);
            Console.WriteLine($"wrote {file}");
            return 0;
        }));
        return command;
    }
}
