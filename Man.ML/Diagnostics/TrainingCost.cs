// The floors of a training configuration, from layer shapes: per segment, the activation elements its forward keeps
// for backward (its units, MAN's copies, its auxiliary head; each tensor once), and the matrix FLOPs of a step. The
// activation floor is the largest segment's: with per-segment scopes, that is all local learning must hold at once.
// Step FLOPs count forward, input gradients and weight gradients (3x forward) for trained layers and forward plus input
// gradients (2x) for MAN's gradient-free EMA copies; element-wise work is left out.
using Man.ML.Local;
using Man.ML.Models;

namespace Man.ML.Diagnostics;

/// <summary>The floors of one configuration at one batch size.</summary>
internal sealed record TrainingCostReport(IReadOnlyList<SegmentCost> Segments, int BatchSize)
{
    /// <summary>Bytes (float32) the largest segment keeps for backward.</summary>
    public long ActivationFloorBytes => Segments.Max(s => s.ActivationElements) * BatchSize * sizeof(float);

    /// <summary>Bytes (float32) MAN's copies add to the largest segment.</summary>
    public long ManFloorBytes => Segments.MaxBy(s => s.ActivationElements)!.ManElements * BatchSize * sizeof(float);

    /// <summary>Matrix GFLOP of one training step.</summary>
    public double StepGflops => Segments.Sum(s => s.StepFlops) * (double)BatchSize / 1e9;
}

/// <summary>Computes <see cref="TrainingCostReport"/>.</summary>
internal static class TrainingCost
{
    /// <summary>The floors of <paramref name="trainer"/>'s configuration at <paramref name="batchSize"/>.</summary>
    /// <exception cref="NotSupportedException">A unit or head cannot state its cost.</exception>
    public static TrainingCostReport Compute(LocalTrainer trainer, int batchSize) =>
        new(SegmentCosts.Of(trainer.Network, trainer.Split, trainer.Heads, trainer.Man), batchSize);
}
