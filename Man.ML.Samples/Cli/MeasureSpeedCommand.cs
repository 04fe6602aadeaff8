// manml measure-speed: step times of one configuration on synthetic data, in this process (run it without
// MALLOC_MMAP_THRESHOLD_); prints one JSON object. manml bench starts it as a child process.
using System.CommandLine;
using System.Text.Json;
using Man.ML.Data;
using Man.ML.Diagnostics;

namespace Man.ML.Samples.Cli;

internal static class MeasureSpeedCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var steps = new Option<int>("--steps") { Description = "Timed steps.", DefaultValueFactory = _ => 5 };
        var warmup = new Option<int>("--warmup") { Description = "Warm-up steps before timing.", DefaultValueFactory = _ => 2 };
        var command = new Command("measure-speed", "Step times (ms) of one configuration on synthetic data.");
        foreach (var o in model.All) command.Options.Add(o);
        command.Options.Add(steps);
        command.Options.Add(warmup);
        command.SetAction(parse => CliErrors.Run(() =>
        {
            model.ApplyThreads(parse);
            var options = model.ToTrainingOptions(parse);
            var times = TrainingSpeedProbe.Measure(options, parse.GetValue(steps), parse.GetValue(warmup),
                imageSize: DatasetKind.Get(options.Dataset).ImageSize);
            Console.WriteLine(JsonSerializer.Serialize(new { step_ms = times }));
            return 0;
        }));
        return command;
    }
}
