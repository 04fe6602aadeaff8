// The pipeline's cost model (docs/PIPELINE.md): a step of W stages on W devices (or W groups of cores) takes as long as
// its slowest stage, each stage's time being its segments' step times plus sending its output downstream over the link;
// an epoch of N batches adds the W − 1 steps of filling the pipeline. Calibrated by nothing but the per-segment times and
// boundary bytes measured on one device, so it predicts what stages cost when they do not slow each other down.

namespace Man.ML.Diagnostics;

/// <summary>A step-time prediction for a pipelined run.</summary>
/// <param name="StageMilliseconds">Each stage's compute and send time per step.</param>
/// <param name="StepMilliseconds">The slowest stage's: the pipeline's step time in steady state.</param>
/// <param name="SequentialMilliseconds">All segments one after another on one device.</param>
/// <param name="SendMilliseconds">Of the slowest stage's time, what sending its output takes.</param>
internal sealed record PipelinePrediction(IReadOnlyList<double> StageMilliseconds, double StepMilliseconds, double SequentialMilliseconds,
    double SendMilliseconds)
{
    /// <summary>Speed-up over the sequential step, for an epoch of <paramref name="batches"/> batches (filling included).</summary>
    public double Speedup(int batches) =>
        SequentialMilliseconds * batches / (StepMilliseconds * (batches + StageMilliseconds.Count - 1));
}

/// <summary>Predicts pipelined step times from per-segment measurements.</summary>
internal static class PipelineCostModel
{
    /// <summary>
    /// The step time of stages ending at <paramref name="ends"/>, given each segment's step time, the bytes each segment
    /// hands on (activations, plus the labels and images every stage receives) and the link's bandwidth (null: shared
    /// memory, nothing to send). <paramref name="sharedSlowdown"/> stretches every stage's compute when the stages share
    /// a machine's caches and memory bandwidth (1 for separate devices): measured as how much slower independent
    /// one-thread trainings run when W of them run at once.
    /// </summary>
    public static PipelinePrediction Predict(IReadOnlyList<double> segmentMilliseconds, IReadOnlyList<long> boundaryBytes,
        IReadOnlyList<int> ends, double? linkGigabitsPerSecond, double sharedSlowdown = 1)
    {
        int k = segmentMilliseconds.Count;
        var stages = ends.Append(k - 1).Select((last, i) => (First: i == 0 ? 0 : ends[i - 1] + 1, Last: last)).ToArray();
        var compute = stages.Select(s => sharedSlowdown * Enumerable.Range(s.First, s.Last - s.First + 1).Sum(j => segmentMilliseconds[j])).ToArray();
        var send = stages.Select((s, i) => i == stages.Length - 1 || linkGigabitsPerSecond is not { } gbps ? 0
            : boundaryBytes[s.Last] * 8 / (gbps * 1e9) * 1000).ToArray();
        var total = compute.Zip(send, (c, x) => c + x).ToArray();
        int slowest = Array.IndexOf(total, total.Max());
        return new PipelinePrediction(total, total[slowest], segmentMilliseconds.Sum(), send[slowest]);
    }
}
