// Each segment's floor from layer shapes: the activation elements its forward keeps for backward (its units, MAN's
// copies, its auxiliary head; each tensor once) and the matrix FLOPs of a step: forward, input gradients and weight
// gradients (3x forward) for trained layers, forward plus input gradients (2x) for MAN's gradient-free EMA copies;
// element-wise work is left out. The memory floors (Diagnostics/TrainingCost.cs) and a pipeline's stage balance
// (SegmentPipeline.cs) are read from it.
using Man.ML.Models;

namespace Man.ML.Local;

/// <summary>One segment's floor.</summary>
/// <param name="Segment">Index.</param>
/// <param name="ActivationElements">Elements kept for backward, per sample (units, MAN copies, head).</param>
/// <param name="ManElements">Of those, what MAN's copies and their sum add.</param>
/// <param name="StepFlops">Matrix FLOPs of the segment's forward and backward, per sample.</param>
internal sealed record SegmentCost(int Segment, long ActivationElements, long ManElements, long StepFlops);

/// <summary>Computes <see cref="SegmentCost"/>s.</summary>
internal static class SegmentCosts
{
    /// <summary>Every segment's floor for a network split by <paramref name="plan"/>, with its auxiliary heads and MAN.</summary>
    /// <exception cref="NotSupportedException">A unit or head cannot state its cost.</exception>
    public static IReadOnlyList<SegmentCost> Of(UnitChainNetwork network, SplitPlan plan, IReadOnlyList<AuxiliaryHead> heads,
        MomentumAuxiliaryNetwork? momentumNetwork)
    {
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
                var auxiliary = Of(heads[j]);
                if (momentumNetwork is { } momentum)
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
        return segments;
    }

    private static IHasCost Of(object module) => module as IHasCost
        ?? throw new NotSupportedException($"{module.GetType().Name} does not state its cost (IHasCost).");
}
