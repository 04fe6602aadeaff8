// manml analyse summarize: a Markdown table of several runs' metrics.json (configuration, last-epoch validation accuracy, time).
using System.CommandLine;
using System.Globalization;
using System.Text.Json;

namespace Man.ML.Samples.Cli;

internal static class SummarizeCommand
{
    public static Command Create()
    {
        var runs = new Option<string[]>("--runs")
        {
            Description = "Run folders (each with metrics.json).", Required = true, AllowMultipleArgumentsPerToken = true,
        };
        var command = new Command("summarize", "Print a Markdown table of runs: configuration, validation accuracy at the last epoch, time.") { runs };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            Console.WriteLine("| run | rule | K | MAN | seed | train images | epochs | val accuracy (last epoch) | train time (s) | images/s |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
            foreach (var dir in parse.GetValue(runs)!)
            {
                var root = CliErrors.ReadRunMetrics(dir);
                var c = root.GetProperty("config");
                var f = root.GetProperty("final");
                string Fmt(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);
                string man = c.GetProperty("man").GetBoolean() ? "yes" : "no";
                Console.WriteLine($"| {Path.GetFileName(Path.TrimEndingDirectorySeparator(dir))} | {c.GetProperty("rule").GetString()} | " +
                                  $"{c.GetProperty("k").GetInt32()} | {man} | " +
                                  $"{c.GetProperty("seed").GetInt32()} | {c.GetProperty("train_images").GetInt32()} | {c.GetProperty("epochs").GetInt32()} | " +
                                  $"{Fmt(100 * f.GetProperty("val_accuracy").GetDouble(), "0.00")} % | " +
                                  $"{Fmt(f.GetProperty("train_seconds").GetDouble(), "0")} | " +
                                  $"{Fmt(f.GetProperty("images_per_second").GetDouble(), "0.0")} |");
            }
            return 0;
        }));
        return command;
    }
}
