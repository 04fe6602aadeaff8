// Where a pipeline's stages should end: the contiguous grouping of per-segment costs into W stages that minimises the
// slowest stage (a pipeline runs at the pace of its slowest stage): the same problem the split balancer solves for units.

namespace Man.ML.Local;

/// <summary>Balances contiguous stages by cost.</summary>
internal static class StageBalance
{
    /// <summary>
    /// Effective FLOPs charged per activation element a segment keeps for backward: the element-wise work (batch norm,
    /// ReLU, sums, their backward) that matrix FLOPs leave out. Measured per-segment times fit 200 to 1,000 depending on
    /// the CPU's vector width and the rule (docs/PIPELINE.md); 500 is their middle, one constant on every machine so that
    /// a plan's default boundaries do not depend on where it is resolved.
    /// </summary>
    public const double FlopsPerActivationElement = 500;

    /// <summary>A segment's estimated cost per sample, in effective FLOPs.</summary>
    public static double Estimate(SegmentCost cost) => cost.StepFlops + FlopsPerActivationElement * cost.ActivationElements;

    /// <summary>The last segment of each stage but the last that minimises the largest stage sum: the split balancer's
    /// contiguous min-peak grouping (<see cref="SplitPlan.Balanced"/>), applied to segments instead of units.</summary>
    /// <param name="costs">Each segment's cost (K entries, non-negative).</param>
    /// <param name="stages">W, 1 to K.</param>
    public static int[] Ends(IReadOnlyList<double> costs, int stages)
    {
        if (stages < 1 || stages > costs.Count)
            throw new ArgumentOutOfRangeException(nameof(stages), stages, $"Stages must be 1 to {costs.Count}.");
        return SplitPlan.Balanced(costs, stages).Segments.SkipLast(1).Select(s => s.End - 1).ToArray();
    }

    /// <summary>Each stage's (first, last) segment for <paramref name="ends"/> over K segments.</summary>
    public static IReadOnlyList<(int First, int Last)> Stages(IReadOnlyList<int> ends, int k) =>
        ends.Append(k - 1).Select((last, i) => (i == 0 ? 0 : ends[i - 1] + 1, last)).ToArray();
}
