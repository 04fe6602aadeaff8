// manml measure memory (formerly measure-memory): the peak training memory of one configuration, measured in this
// process on synthetic data and printed as one JSON object. The memory notebook, the memory guard test and manml-lab's
// bench start it as a child process with MALLOC_MMAP_THRESHOLD_=65536; manml-lab's measure-speed is built by Create too.
using System.CommandLine;
using System.Text.Json;
using Man.ML.Diagnostics;
using Man.ML.Training;

namespace Man.ML.Samples.Cli;

internal static class MeasureCommands
{
    public static Command Memory() => Create("measure-memory",
        "Peak training memory (MiB above the pre-step resident size) of one configuration on synthetic data shaped like the " +
        "data set's (CIFAR 32x32x10 classes, ImageNet 224x224x1000). Run with MALLOC_MMAP_THRESHOLD_=65536 in the environment.",
        defaultSteps: 3,
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
                batches_in_flight_max = report.BatchesInFlight,
                malloc_mmap_threshold_set = report.MallocThresholdSet,
            };
        });

    /// <summary>
    /// A command that measures one configuration (the training options of <see cref="ModelOptions"/>, --steps and
    /// --warmup) with <paramref name="measure"/>(options, steps, warm-up steps, classes, image side) and prints its
    /// result as one JSON line.
    /// </summary>
    public static Command Create(string name, string description, int defaultSteps, Func<TrainingOptions, int, int, int, int, object> measure)
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
