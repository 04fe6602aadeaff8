// Where a training step's time goes, unit by unit: for each unit of a network, the median time of its forward and of
// its backward (with a random output gradient) on inputs of the batch's shape, beside its matrix FLOPs, so a slow layer
// shows up as a low GFLOP/s.
using System.Diagnostics;
using Man.ML.Models;
using static TorchSharp.torch;

namespace Man.ML.Samples.Tooling;

/// <summary>One unit's profile.</summary>
/// <param name="Name">Unit name.</param>
/// <param name="ForwardMs">Median forward time.</param>
/// <param name="BackwardMs">Median backward time.</param>
/// <param name="StepGflop">Matrix GFLOP of its forward and both gradients for the batch.</param>
internal sealed record UnitProfile(string Name, double ForwardMs, double BackwardMs, double StepGflop)
{
    /// <summary>GFLOP/s over forward and backward.</summary>
    public double AchievedGflops => StepGflop / ((ForwardMs + BackwardMs) / 1000);
}

/// <summary>Profiles units of a network.</summary>
internal static class UnitProfiler
{
    /// <summary>Profiles every unit of <paramref name="network"/> (training mode) at <paramref name="batchSize"/>, median of <paramref name="repeats"/>.</summary>
    public static IReadOnlyList<UnitProfile> Profile(UnitChainNetwork network, int batchSize, int repeats = 5)
    {
        network.train();
        var profiles = new List<UnitProfile>();
        var shape = network.InputShape;
        for (int u = 0; u < network.Units.Count; u++)
        {
            var unit = network.Units[u];
            var cost = ((IHasCost)unit).Cost(shape);
            var forward = new List<double>();
            var backward = new List<double>();
            for (int r = 0; r < repeats + 1; r++)
            {
                using var scope = NewDisposeScope();
                var x = randn(batchSize, shape.Channels, shape.Height, shape.Width).requires_grad_(true);
                var clock = Stopwatch.StartNew();
                var y = unit.call(x);
                double f = clock.Elapsed.TotalMilliseconds;
                var g = randn_like(y);
                clock.Restart();
                y.backward(new[] { g });
                double b = clock.Elapsed.TotalMilliseconds;
                if (r == 0) continue; // warm-up
                forward.Add(f);
                backward.Add(b);
            }
            foreach (var p in unit.parameters()) p.grad?.zero_();
            profiles.Add(new UnitProfile(network.UnitInfos[u].Name, Median(forward), Median(backward), 3.0 * cost.ForwardFlops * batchSize / 1e9));
            shape = cost.Output;
        }
        return profiles;
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
