// Where a pipeline's stages should end: the contiguous grouping of per-segment costs into W stages that minimises the
// slowest stage (a pipeline runs at the pace of its slowest stage). K and W are small, so an exact dynamic programme.

namespace Man.ML.Local;

/// <summary>Balances contiguous stages by cost.</summary>
internal static class StageBalance
{
    /// <summary>
    /// Effective FLOPs charged per activation element a segment keeps for backward: the element-wise work (batch norm,
    /// ReLU, sums, their backward) that matrix FLOPs leave out. Calibrated on measured per-segment times
    /// (docs/PIPELINE.md).
    /// </summary>
    public const double FlopsPerActivationElement = 200;

    /// <summary>A segment's estimated cost per sample, in effective FLOPs.</summary>
    public static double Estimate(SegmentCost cost) => cost.StepFlops + FlopsPerActivationElement * cost.ActivationElements;

    /// <summary>The last segment of each stage but the last that minimises the largest stage sum (ties: earlier ends).</summary>
    /// <param name="costs">Each segment's cost (K entries, non-negative).</param>
    /// <param name="stages">W, 1 to K.</param>
    public static int[] Ends(IReadOnlyList<double> costs, int stages)
    {
        int k = costs.Count;
        if (stages < 1 || stages > k) throw new ArgumentOutOfRangeException(nameof(stages), stages, $"Stages must be 1 to {k}.");
        var prefix = new double[k + 1];
        for (int i = 0; i < k; i++) prefix[i + 1] = prefix[i] + costs[i];
        // best[w, i]: the smallest largest-stage cost of segments 0..i−1 in w stages; cut[w, i]: where its last stage starts.
        var best = new double[stages + 1, k + 1];
        var cut = new int[stages + 1, k + 1];
        for (int w = 0; w <= stages; w++)
            for (int i = 0; i <= k; i++) best[w, i] = double.PositiveInfinity;
        best[0, 0] = 0;
        for (int w = 1; w <= stages; w++)
            for (int i = w; i <= k; i++)
                for (int start = w - 1; start < i; start++)
                {
                    double value = Math.Max(best[w - 1, start], prefix[i] - prefix[start]);
                    if (value < best[w, i])
                    {
                        best[w, i] = value;
                        cut[w, i] = start;
                    }
                }
        var ends = new int[stages - 1];
        int end = k;
        for (int w = stages; w > 1; w--)
        {
            end = cut[w, end];
            ends[w - 2] = end - 1;
        }
        return ends;
    }

    /// <summary>Each stage's (first, last) segment for <paramref name="ends"/> over K segments.</summary>
    public static IReadOnlyList<(int First, int Last)> Stages(IReadOnlyList<int> ends, int k) =>
        ends.Append(k - 1).Select((last, i) => (i == 0 ? 0 : ends[i - 1] + 1, last)).ToArray();
}
