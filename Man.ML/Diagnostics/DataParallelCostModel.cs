// Step time of data-parallel local learning on R hosts, from what one host measures: each segment's compute time at the
// per-rank batch and its gradient bytes. Segment j's all-reduce starts when its backward ends and the link carries one
// all-reduce at a time (ring all-reduce: 2(R − 1) messages of bytes/R each, plus a latency per message), so a segment's
// communication hides behind the later segments' compute; what is left after the last segment is exposed. The optimizer
// step is part of the last segment's time.
namespace Man.ML.Diagnostics;

/// <summary>A data-parallel step as the model predicts it.</summary>
/// <param name="ComputeMilliseconds">One rank's compute (every segment), the same on every host.</param>
/// <param name="CommunicationMilliseconds">Every segment's all-reduce time, summed.</param>
/// <param name="StepMilliseconds">The step: compute and the communication not hidden behind it.</param>
internal sealed record DataParallelPrediction(double ComputeMilliseconds, double CommunicationMilliseconds, double StepMilliseconds)
{
    /// <summary>Communication after the last segment's compute.</summary>
    public double ExposedMilliseconds => StepMilliseconds - ComputeMilliseconds;

    /// <summary>The share of communication hidden behind compute, in [0, 1].</summary>
    public double HiddenFraction => CommunicationMilliseconds <= 0 ? 1 : 1 - ExposedMilliseconds / CommunicationMilliseconds;

    /// <summary>Images/s over R hosts against one host at the same per-rank batch: R · compute / step.</summary>
    public double SpeedUp(int ranks) => ranks * ComputeMilliseconds / StepMilliseconds;
}

internal static class DataParallelCostModel
{
    /// <summary>Time of a ring all-reduce of <paramref name="bytes"/> over <paramref name="ranks"/> hosts.</summary>
    public static double AllReduceMilliseconds(long bytes, int ranks, double linkGbps, double latencyMicroseconds)
    {
        if (ranks <= 1 || bytes == 0) return 0;
        double bytesPerMs = linkGbps * 1e9 / 8 / 1000;
        return 2.0 * (ranks - 1) * (latencyMicroseconds / 1000 + bytes / (double)ranks / bytesPerMs);
    }

    /// <param name="segmentMilliseconds">Each segment's forward, backward and update at the per-rank batch.</param>
    /// <param name="gradientBytes">Each segment's gradient bytes.</param>
    /// <param name="ranks">R.</param>
    /// <param name="linkGbps">Link bandwidth per host, Gbit/s.</param>
    /// <param name="latencyMicroseconds">Latency of one message.</param>
    public static DataParallelPrediction Predict(IReadOnlyList<double> segmentMilliseconds, IReadOnlyList<long> gradientBytes, int ranks,
        double linkGbps, double latencyMicroseconds = 25)
    {
        if (segmentMilliseconds.Count != gradientBytes.Count) throw new ArgumentException("One gradient size per segment.", nameof(gradientBytes));
        double computeEnd = 0, linkFree = 0, communication = 0;
        for (int j = 0; j < segmentMilliseconds.Count; j++)
        {
            computeEnd += segmentMilliseconds[j];
            double t = AllReduceMilliseconds(gradientBytes[j], ranks, linkGbps, latencyMicroseconds);
            communication += t;
            linkFree = Math.Max(linkFree, computeEnd) + t;
        }
        return new DataParallelPrediction(computeEnd, communication, Math.Max(computeEnd, linkFree));
    }
}
