// Where a training step's time goes, unit by unit: for each unit of a network, the median time of its forward and of
// its backward (with a random output gradient) on inputs of the batch's shape, beside its matrix FLOPs, so a slow layer
// shows up as a low GFLOP/s.
using System.Diagnostics;
using Man.ML.Models;
using static TorchSharp.torch;

namespace Man.ML.Lab.Tooling;

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
    /// <summary>
    /// Profiles every unit of <paramref name="network"/> (training mode) at <paramref name="batchSize"/>, median of <paramref name="repeats"/>,
    /// computing in <paramref name="precision"/> (units after the first then take bf16 maps, as in training).
    /// </summary>
    public static IReadOnlyList<UnitProfile> Profile(UnitChainNetwork network, int batchSize, int repeats = 5,
        TrainingPrecision precision = TrainingPrecision.Float32)
    {
        using var computing = MixedPrecision.Enter(precision);
        network.train();
        var profiles = new List<UnitProfile>();
        var shape = network.InputShape;
        for (int u = 0; u < network.Units.Count; u++)
        {
            var unit = network.Units[u];
            var cost = ((IHasCost)unit).Cost(shape);
            var forward = new List<double>();
            var backward = new List<double>();
            for (int r = 0; r < repeats + 2; r++)
            {
                using var scope = NewDisposeScope();
                // In the layout training gives the unit (channels-last for CIFAR networks on the CPU by default).
                // The first unit's input is the image batch, which takes no gradient in training.
                var x = ActivationLayouts.ForNetwork(randn(batchSize, shape.Channels, shape.Height, shape.Width), network.Family, network.Layout);
                if (u > 0 && MixedPrecision.Active) x = x.to(ScalarType.BFloat16);
                x.requires_grad_(u > 0);
                var clock = Stopwatch.StartNew();
                var y = unit.call(x);
                double f = clock.Elapsed.TotalMilliseconds;
                var g = randn_like(y);
                clock.Restart();
                y.backward(new[] { g });
                double b = clock.Elapsed.TotalMilliseconds;
                if (r < 2) continue; // warm-up (the first call of a shape also creates its kernels)
                forward.Add(f);
                backward.Add(b);
            }
            foreach (var p in unit.parameters()) p.grad?.zero_();
            profiles.Add(new UnitProfile(network.UnitInfos[u].Name, Median(forward), Median(backward),
                (u == 0 ? 2.0 : 3.0) * cost.ForwardFlops * batchSize / 1e9));
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

/// <summary>
/// Milliseconds of each phase of an end-to-end training step (medians), and of the whole <see cref="Local.LocalTrainer.Step(Tensor, Tensor)"/>.
/// </summary>
internal sealed record StepPhases(double ZeroGradMs, double ForwardMs, double BackwardMs, double CheckMs, double OptimizerMs, double StepMs);

/// <summary>Times the phases of a training step the way <see cref="Local.LocalTrainer.Step(Tensor, Tensor)"/> runs them.</summary>
internal static class StepProfiler
{
    /// <summary>
    /// Phases of an end-to-end step of <paramref name="trainer"/> (K = 1) at <paramref name="batchSize"/>, median of <paramref name="repeats"/>.
    /// </summary>
    public static StepPhases EndToEnd(Local.LocalTrainer trainer, int batchSize, int repeats)
    {
        var network = trainer.Network;
        var shape = network.InputShape;
        trainer.SetTraining(true);
        using var x = randn(batchSize, shape.Channels, shape.Height, shape.Width);
        using var y = randint(0, network.ClassCount, new long[] { batchSize });
        var phases = Enumerable.Range(0, 6).Select(_ => new List<double>()).ToArray();
        var parameters = network.parameters().ToList();
        for (int r = 0; r < repeats + 2; r++)
        {
            using var scope = NewDisposeScope();
            var clock = Stopwatch.StartNew();
            trainer.Optimizer.zero_grad();
            double zero = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            Tensor loss;
            using (MixedPrecision.Enter(trainer.Precision))
                loss = nn.functional.cross_entropy(MixedPrecision.Float32(network.call(x)), y);
            _ = loss.item<float>();
            double forward = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            loss.backward();
            double backward = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            _ = stack(parameters.Select(p => p.grad!.isfinite().all()).ToArray()).all().item<bool>();
            double check = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            trainer.Optimizer.step();
            double optimizer = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            trainer.Step(x, y);
            double step = clock.Elapsed.TotalMilliseconds;
            if (r < 2) continue; // warm-up
            foreach (var (list, value) in phases.Zip(new[] { zero, forward, backward, check, optimizer, step })) list.Add(value);
        }
        var m = phases.Select(Median).ToArray();
        return new StepPhases(m[0], m[1], m[2], m[3], m[4], m[5]);
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}

/// <summary>Milliseconds per step (medians) of each part of a local-learning step, summed over its segments.</summary>
internal sealed record LocalStepPhases(double ZeroGradMs, double UnitsForwardMs, double ManForwardMs, double HeadForwardMs, double BackwardMs,
    double EmaUpdateMs, double CheckMs, double OptimizerMs, double StepMs);

/// <summary>Times the parts of <see cref="Local.LocalTrainer.Step(Tensor, Tensor)"/> the way it runs them, segment by segment.</summary>
internal static class LocalStepProfiler
{
    public static LocalStepPhases Profile(Local.LocalTrainer trainer, int batchSize, int repeats)
    {
        var network = trainer.Network;
        var plan = trainer.Split;
        var shape = network.InputShape;
        trainer.SetTraining(true);
        using var x0 = randn(batchSize, shape.Channels, shape.Height, shape.Width);
        using var y = randint(0, network.ClassCount, new long[] { batchSize });
        var targets = new Local.LocalTargets(y, x0);
        var all = Enumerable.Range(0, 9).Select(_ => new List<double>()).ToArray();
        var parameters = trainer.Optimizer.parameters().ToList();
        for (int r = 0; r < repeats + 2; r++)
        {
            var t = new double[9];
            var clock = Stopwatch.StartNew();
            double Lap() { double ms = clock.Elapsed.TotalMilliseconds; clock.Restart(); return ms; }
            trainer.Optimizer.zero_grad();
            t[0] += Lap();
            Tensor x = x0;
            for (int j = 0; j < plan.K; j++)
            {
                using var scope = NewDisposeScope();
                using var computing = MixedPrecision.Enter(trainer.Precision);
                var range = plan.Segments[j];
                if (j < plan.K - 1) trainer.Man?.BeforeForward(j);
                var h = network.ForwardUnits(x, range.Start, range.End);
                t[1] += Lap();
                Tensor loss;
                if (j == plan.K - 1)
                {
                    loss = nn.functional.cross_entropy(MixedPrecision.Float32(network.Head.call(h)), y);
                    _ = loss.item<float>();
                    t[3] += Lap();
                }
                else
                {
                    var features = trainer.Man is null ? h : trainer.Man[j].call(h);
                    t[2] += Lap();
                    loss = trainer.Heads[j].Loss(features, targets);
                    _ = loss.item<float>();
                    t[3] += Lap();
                }
                loss.backward();
                t[4] += Lap();
                if (j < plan.K - 1)
                {
                    trainer.Man?.AfterLocalBackward(j);
                    t[5] += Lap();
                    var next = h.detach().MoveToOuterDisposeScope();
                    if (!ReferenceEquals(x, x0)) x.Dispose();
                    x = next;
                }
                clock.Restart();
            }
            if (!ReferenceEquals(x, x0)) x.Dispose();
            using (NewDisposeScope())
                _ = stack(parameters.Where(p => p.grad is not null).Select(p => p.grad!.isfinite().all()).ToArray()).all().item<bool>();
            t[6] += Lap();
            trainer.Optimizer.step();
            t[7] += Lap();
            trainer.Step(x0, y);
            t[8] += Lap();
            if (r < 2) continue; // warm-up
            for (int i = 0; i < 9; i++) all[i].Add(t[i]);
        }
        var m = all.Select(v => { v.Sort(); return v[v.Count / 2]; }).ToArray();
        return new LocalStepPhases(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8]);
    }
}
