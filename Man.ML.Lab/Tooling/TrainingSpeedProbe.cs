// Step time of one configuration on synthetic data: warm-up steps, then each timed step alone. Run it in a process
// without MALLOC_MMAP_THRESHOLD_ (that setting, needed for memory figures, slows training down).
using System.Diagnostics;
using Man.ML.Local;
using Man.ML.Training;
using static TorchSharp.torch;

namespace Man.ML.Lab.Tooling;

/// <summary>Times training steps.</summary>
internal static class TrainingSpeedProbe
{
    /// <summary>Milliseconds of each of <paramref name="steps"/> timed steps after <paramref name="warmupSteps"/> warm-up steps.</summary>
    public static IReadOnlyList<double> Measure(TrainingOptions options, int steps = 5, int warmupSteps = 2, int classes = 10, int imageSize = 32) =>
        Measure(options, out _, steps, warmupSteps, classes, imageSize);

    /// <summary>As <see cref="Measure(TrainingOptions, int, int, int, int)"/>, with the step's matrix GFLOP from the cost model.</summary>
    public static IReadOnlyList<double> Measure(
        TrainingOptions options, out double stepGflop, int steps = 5, int warmupSteps = 2, int classes = 10, int imageSize = 32)
    {
        var device = Devices.Resolve(options.Device);
        using var local = new Trainer(options).CreateLocalTrainer(classes, imageSize);
        stepGflop = Man.ML.Diagnostics.TrainingCost.Compute(local, options.BatchSize).StepGflops;
        var network = local.Network;
        local.SetTraining(true);
        var generator = new Random(options.Seed);
        using var y = tensor(Enumerable.Range(0, options.BatchSize).Select(_ => (long)generator.Next(classes)).ToArray()).to(device);
        using var x = randn(options.BatchSize, 3, imageSize, imageSize).to(device);
        for (int i = 0; i < warmupSteps; i++) local.Step(x, y);
        var times = new List<double>();
        for (int i = 0; i < steps; i++)
        {
            var clock = Stopwatch.StartNew();
            local.Step(x, y);
            if (device.type == TorchSharp.DeviceType.CUDA) cuda.synchronize();
            times.Add(clock.Elapsed.TotalMilliseconds);
        }
        network.Dispose();
        return times;
    }
}

/// <summary>The peak matrix rate this process's libtorch reaches: float32 matrix products, best of several sizes.</summary>
internal static class MatrixRate
{
    /// <summary>GFLOP/s of the fastest float32 matrix product among n = 512, 1024, 2048 (best of 5 each).</summary>
    public static double MeasureGflops(Device? device = null)
    {
        device ??= CPU;
        double best = 0;
        using var noGrad = no_grad();
        foreach (int n in new[] { 512, 1024, 2048 })
        {
            using var a = randn(n, n).to(device);
            using var b = randn(n, n).to(device);
            a.matmul(b).Dispose();
            for (int r = 0; r < 5; r++)
            {
                var clock = Stopwatch.StartNew();
                using var c = a.matmul(b);
                if (device.type == TorchSharp.DeviceType.CUDA) cuda.synchronize();
                best = Math.Max(best, 2.0 * n * n * n / clock.Elapsed.TotalSeconds / 1e9);
            }
        }
        return best;
    }
}
