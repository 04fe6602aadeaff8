// manml-lab measure-speed: the step times of one configuration, measured in this process on synthetic data and printed
// as one JSON object with the step's GFLOP and the peak matrix rate. bench starts it as a child process without
// MALLOC_MMAP_THRESHOLD_ (that setting, needed for memory figures, slows training down).
using System.CommandLine;
using Man.ML.Lab.Tooling;
using Man.ML.Samples.Cli;

namespace Man.ML.Lab.Cli;

internal static class MeasureSpeedCommand
{
    public static Command Create() => MeasureCommands.Create("measure-speed", "Step times (ms) of one configuration on synthetic data.",
        defaultSteps: 5,
        (options, steps, warmup, classes, imageSize) =>
        {
            var times = TrainingSpeedProbe.Measure(options, out double gflop, steps, warmup, classes, imageSize);
            // The peak matrix rate in the same process, after the steps, so the step's GFLOP/s can be set against it.
            return new
            {
                step_ms = times, gflop_per_step = Math.Round(gflop, 3), peak_matrix_gflops = Math.Round(MatrixRate.MeasureGflops(), 1),
            };
        });
}
