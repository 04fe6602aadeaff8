// manml measure-memory and manml measure-speed: one configuration measured in this process on synthetic data, printed as
// one JSON object. manml bench and the memory guard test start them as child processes (memory with
// MALLOC_MMAP_THRESHOLD_=65536, speed without it).
using System.CommandLine;
using System.Text.Json;
using Man.ML.Samples.Tooling;
using Man.ML.Data;
using Man.ML.Diagnostics;
using Man.ML.Training;

namespace Man.ML.Samples.Cli;

internal static class MeasureCommands
{
    public static Command Memory() => Create("measure-memory",
        "Peak training memory (MiB above the pre-step resident size) of one configuration on synthetic data shaped like the data set's (CIFAR 32x32x10 classes, ImageNet 224x224x1000). " +
        "Run with MALLOC_MMAP_THRESHOLD_=65536 in the environment.", defaultSteps: 3,
        (options, steps, warmup, classes, imageSize) =>
        {
            var report = TrainingMemoryProbe.Measure(options, steps, warmup, classes, imageSize);
            return new
            {
                arch = options.Architecture,
                k = options.K,
                rule = Choices.Name(options.Rule),
                man = options.Man is not null,
                batch_size = options.BatchSize,
                image_size = imageSize,
                peak_memory_mb = Math.Round(report.PeakAboveBaselineMiB, 1),
                baseline_mb = Math.Round(report.BaselineBytes / 1048576.0, 1),
                steps = report.Steps,
                malloc_mmap_threshold_set = report.MallocThresholdSet,
            };
        });

    public static Command Speed() => Create("measure-speed", "Step times (ms) of one configuration on synthetic data.", defaultSteps: 5,
        (options, steps, warmup, classes, imageSize) =>
        {
            var times = TrainingSpeedProbe.Measure(options, out double gflop, steps, warmup, classes, imageSize);
            // The peak matrix rate in the same process, after the steps, so the step's GFLOP/s can be set against it.
            return new { step_ms = times, gflop_per_step = Math.Round(gflop, 3), peak_matrix_gflops = Math.Round(MatrixRate.MeasureGflops(), 1) };
        });

    private static Command Create(string name, string description, int defaultSteps, Func<TrainingOptions, int, int, int, int, object> measure)
    {
        var model = new ModelOptions();
        var steps = new Option<int>("--steps") { Description = "Measured steps.", DefaultValueFactory = _ => defaultSteps };
        var warmup = new Option<int>("--warmup") { Description = "Warm-up steps before measuring.", DefaultValueFactory = _ => 2 };
        var command = new Command(name, description);
        foreach (var o in model.All) command.Options.Add(o);
        command.Options.Add(steps);
        command.Options.Add(warmup);
        command.SetAction(parse => CliErrors.Run(() =>
        {
            model.ApplyProcessSettings(parse);
            var options = model.ToTrainingOptions(parse);
            var dataset = options.Dataset;
            var result = measure(options, parse.GetValue(steps), parse.GetValue(warmup), dataset.Classes, options.ImageSize ?? dataset.ImageSize);
            Console.WriteLine(JsonSerializer.Serialize(result));
            return 0;
        }));
        return command;
    }
}
