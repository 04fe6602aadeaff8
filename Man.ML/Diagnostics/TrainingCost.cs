// The floors of a training configuration, from layer shapes: per segment, the activation elements its forward keeps
// for backward (its units, MAN's copies, its auxiliary head; each tensor once), and the matrix FLOPs of a step. The
// activation floor is the largest segment's: with per-segment scopes, that is all local learning must hold at once.
// Step FLOPs count forward, input gradients and weight gradients (3x forward) for trained layers and forward plus input
// gradients (2x) for MAN's gradient-free EMA copies; element-wise work is left out.
using Man.ML.Local;
using Man.ML.Models;

namespace Man.ML.Diagnostics;

/// <summary>One segment's floor.</summary>
/// <param name="Segment">Index.</param>
/// <param name="ActivationElements">Elements kept for backward, per sample (units, MAN copies, head).</param>
/// <param name="ManElements">Of those, what MAN's copies and their sum add.</param>
/// <param name="StepFlops">Matrix FLOPs of the segment's forward and backward, per sample.</param>
internal sealed record SegmentCost(int Segment, long ActivationElements, long ManElements, long StepFlops);

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
    public static TrainingCostReport Compute(LocalTrainer trainer, int batchSize)
    {
        var network = trainer.Network;
        var plan = trainer.Split;
        var segments = new List<SegmentCost>();
        for (int j = 0; j < plan.K; j++)
        {
            var range = plan.Segments[j];
            var shape = network.UnitInfos[range.Start].Input;
            long elements = 0, flops = 0, man = 0;
            bool previousKeepsOutput = false;  // the segment's input is a detached leaf: only its first unit keeps it
            for (int u = range.Start; u < range.End; u++)
            {
                var cost = Of(network.Units[u]).Cost(shape);
                elements += cost.SavedInternal + (previousKeepsOutput ? 0 : cost.SavedInput);
                flops += 3 * cost.ForwardFlops;
                previousKeepsOutput = cost.SavesOutput;
                shape = cost.Output;
            }
            if (j == plan.K - 1)
            {
                var head = Of(network.Head).Cost(shape);
                elements += head.SavedInternal + (previousKeepsOutput ? 0 : head.SavedInput);
                flops += 3 * head.ForwardFlops;
            }
            else
            {
                var auxiliary = Of(trainer.Heads[j]);
                if (trainer.Man is { } momentum)
                {
                    var branch = momentum[j];
                    var copies = branch.Cost(shape);
                    long ema = branch.EmaForwardFlops(shape);
                    man = copies.SavedInternal + (previousKeepsOutput ? 0 : copies.SavedInput) + copies.Output.Elements; // + their sum
                    flops += 3 * (copies.ForwardFlops - ema) + 2 * ema;
                    shape = copies.Output;
                    var head = auxiliary.Cost(shape);
                    elements += man + head.SavedInternal + head.SavedInput;
                    flops += 3 * head.ForwardFlops;
                }
                else
                {
                    var head = auxiliary.Cost(shape);
                    elements += head.SavedInternal + (previousKeepsOutput ? 0 : head.SavedInput);
                    flops += 3 * head.ForwardFlops;
                }
            }
            segments.Add(new SegmentCost(j, elements, man, flops));
        }
        return new TrainingCostReport(segments, batchSize);
    }

    private static IHasCost Of(object module) => module as IHasCost
        ?? throw new NotSupportedException($"{module.GetType().Name} does not state its cost (IHasCost).");
}
