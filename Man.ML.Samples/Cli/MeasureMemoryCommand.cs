// manml measure-memory: the peak training memory of one configuration, in this process. Start it in a process of its
// own with MALLOC_MMAP_THRESHOLD_=65536 (the memory guard test and benchmarks do); prints one JSON object.
using System.CommandLine;
using System.Text.Json;
using Man.ML.Diagnostics;

namespace Man.ML.Samples.Cli;

internal static class MeasureMemoryCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var steps = new Option<int>("--steps") { Description = "Measured steps.", DefaultValueFactory = _ => 3 };
        var warmup = new Option<int>("--warmup") { Description = "Warm-up steps before measuring.", DefaultValueFactory = _ => 2 };
        var command = new Command("measure-memory",
            "Peak training memory (MiB above the pre-step resident size) of one configuration on synthetic CIFAR-shaped data. " +
            "Run with MALLOC_MMAP_THRESHOLD_=65536 in the environment.");
        foreach (var o in model.All) command.Options.Add(o);
        command.Options.Add(steps);
        command.Options.Add(warmup);
        command.SetAction(parse => CliErrors.Run(() =>
        {
            model.ApplyThreads(parse);
            var options = model.ToTrainingOptions(parse);
            var report = TrainingMemoryProbe.Measure(options, parse.GetValue(steps), parse.GetValue(warmup),
                imageSize: Man.ML.Data.DatasetKind.Get(options.Dataset).ImageSize);
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                arch = options.Architecture,
                k = options.K,
                rule = options.Rule,
                man = options.Man is not null,
                batch_size = options.BatchSize,
                peak_memory_mb = Math.Round(report.PeakAboveBaselineMiB, 1),
                baseline_mb = Math.Round(report.BaselineBytes / 1048576.0, 1),
                steps = report.Steps,
                malloc_mmap_threshold_set = report.MallocThresholdSet,
            }));
            return 0;
        }));
        return command;
    }
}
