// What a pipeline of W stages gives on this machine, and what the cost model predicts it gives: each segment's step
// time measured alone at one libtorch thread (forward, local loss, backward, EMA update, its SGD step), the bytes each
// boundary hands downstream, then images/s of the sequential step at 1 and 2 threads and of the pipeline at one thread
// per stage, in alternating rounds on synthetic data.
using System.Diagnostics;
using Man.ML.Diagnostics;
using Man.ML.Local;
using Man.ML.Training;
using static TorchSharp.torch;

namespace Man.ML.Lab.Tooling;

/// <summary>One segment as measured.</summary>
/// <param name="Milliseconds">Median step time of the segment alone at one thread (its SGD step included).</param>
/// <param name="OutputBytes">Bytes of the activation it hands to the next segment (0 for the last).</param>
/// <param name="Cost">Its floors from layer shapes.</param>
internal sealed record MeasuredSegment(double Milliseconds, long OutputBytes, SegmentCost Cost);

/// <summary>Measures segments and pipelines.</summary>
internal static class PipelineProbe
{
    /// <summary>Each segment's median step time at one thread over <paramref name="steps"/> sequential steps (after
    /// <paramref name="warmup"/>), with the bytes it hands on.</summary>
    public static IReadOnlyList<MeasuredSegment> MeasureSegments(LocalTrainer local, int batchSize, int steps, int warmup)
    {
        set_num_threads(1);
        var network = local.Network;
        var shape = network.InputShape;
        local.SetTraining(true);
        using var images = randn(batchSize, shape.Channels, shape.Height, shape.Width);
        using var labels = randint(0, network.ClassCount, new long[] { batchSize });
        var targets = new LocalTargets(labels, images);
        int k = local.Split.K;
        var times = Enumerable.Range(0, k).Select(_ => new List<double>()).ToArray();
        var bytes = new long[k];
        var parameters = Enumerable.Range(0, k).Select(j => local.TrainableParameters(j, j)).ToArray();
        for (int step = 0; step < warmup + steps; step++)
        {
            local.Optimizer.zero_grad();
            Tensor x = images;
            for (int j = 0; j < k; j++)
            {
                var clock = Stopwatch.StartNew();
                var result = local.TrainSegment(j, x, targets);
                local.StepParameters(parameters[j], 0.01);
                double ms = clock.Elapsed.TotalMilliseconds;
                if (step >= warmup) times[j].Add(ms);
                if (!ReferenceEquals(x, images)) x.Dispose();
                if (result.Output is { } output) bytes[j] = output.numel() * output.element_size();
                x = result.Output!;
            }
        }
        var costs = SegmentCosts.Of(network, local.Split, local.Heads, local.Man);
        return Enumerable.Range(0, k).Select(j => new MeasuredSegment(Median(times[j]), bytes[j], costs[j])).ToArray();
    }

    /// <summary>Images/s of <paramref name="steps"/> sequential steps at <paramref name="threads"/> threads.</summary>
    public static double SequentialImagesPerSecond(LocalTrainer local, int batchSize, int steps, int threads)
    {
        set_num_threads(threads);
        var shape = local.Network.InputShape;
        using var images = randn(batchSize, shape.Channels, shape.Height, shape.Width);
        using var labels = randint(0, local.Network.ClassCount, new long[] { batchSize });
        local.Step(images, labels); // warm-up
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++) local.Step(images, labels);
        return steps * batchSize / clock.Elapsed.TotalSeconds;
    }

    /// <summary>
    /// Images/s of two independent sequential trainings at one thread each, run at the same time on two threads: what
    /// two stages could reach if they never waited for each other, on this machine's shared caches and memory.
    /// </summary>
    /// <returns>Each thread's images/s: a job whose threads wait for each other runs at twice the slower one's.</returns>
    public static (double First, double Second) ConcurrentImagesPerSecond(LocalTrainer first, LocalTrainer second, int batchSize, int steps)
    {
        double a = 0, b = 0;
        var threads = new[] { new Thread(() => a = SequentialImagesPerSecond(first, batchSize, steps, 1)),
            new Thread(() => b = SequentialImagesPerSecond(second, batchSize, steps, 1)) };
        foreach (var t in threads) t.Start();
        foreach (var t in threads) t.Join();
        return (a, b);
    }

    /// <summary>Images/s of one pipelined epoch of <paramref name="steps"/> batches (fill and drain included).</summary>
    public static double PipelinedImagesPerSecond(LocalTrainer local, PipelineLayout layout, int batchSize, int steps)
    {
        using var pipeline = new SegmentPipeline(local, layout);
        var shape = local.Network.InputShape;
        using var images = randn(batchSize, shape.Channels, shape.Height, shape.Width);
        using var labels = randint(0, local.Network.ClassCount, new long[] { batchSize });
        void Epoch(int n) => pipeline.RunEpoch(0, n, _ => (images.alias().DetachFromDisposeScope(), labels.alias().DetachFromDisposeScope()),
            _ => 0.01, NonFinitePolicy.Stop, (_, _) => { }, CancellationToken.None);
        Epoch(layout.Stages.Count); // warm-up: every stage's first steps
        var clock = Stopwatch.StartNew();
        Epoch(steps);
        return steps * batchSize / clock.Elapsed.TotalSeconds;
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values.Count % 2 == 1 ? values[values.Count / 2] : (values[values.Count / 2 - 1] + values[values.Count / 2]) / 2;
    }
}
