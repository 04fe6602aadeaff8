// Where a local step's time goes outside the backbone: for each segment, MAN's copies and the auxiliary head (for
// InfoPro, its decoder and its classifier apart) timed forward and backward on features of the segment's shape,
// beside their matrix FLOPs, so a slow part shows up as a low GFLOP/s.
using System.Diagnostics;
using Man.ML.Local;
using Man.ML.Models;
using static TorchSharp.torch;

namespace Man.ML.Lab.Tooling;

/// <summary>One auxiliary part of one segment.</summary>
/// <param name="Segment">Segment index.</param>
/// <param name="Part">What was timed: "MAN copies", "head", "decoder", "classifier".</param>
/// <param name="Input">Its input shape.</param>
/// <param name="ForwardMs">Median forward time (with the loss, for heads).</param>
/// <param name="BackwardMs">Median backward time.</param>
/// <param name="StepGflop">Matrix GFLOP of its forward and the gradients training computes, for the batch.</param>
internal sealed record HeadPartProfile(int Segment, string Part, FeatureShape Input, double ForwardMs, double BackwardMs, double StepGflop)
{
    /// <summary>GFLOP/s over forward and backward.</summary>
    public double AchievedGflops => StepGflop / ((ForwardMs + BackwardMs) / 1000);
}

/// <summary>Profiles MAN's copies and the auxiliary heads of a local trainer.</summary>
internal static class HeadProfiler
{
    public static IReadOnlyList<HeadPartProfile> Profile(LocalTrainer trainer, int batchSize, int repeats)
    {
        using var computing = MixedPrecision.Enter(trainer.Precision); // the parts compute as the trainer's steps do
        trainer.SetTraining(true);
        var network = trainer.Network;
        var image = network.InputShape;
        using var images = randn(batchSize, image.Channels, image.Height, image.Width);
        using var labels = randint(0, network.ClassCount, new long[] { batchSize });
        var targets = new LocalTargets(labels, images);
        var results = new List<HeadPartProfile>();
        for (int j = 0; j < trainer.Split.K - 1; j++)
        {
            var h = network.UnitInfos[trainer.Split.Segments[j].End - 1].Output;
            var features = h;
            if (trainer.Man is { } man)
            {
                var branch = man[j];
                var cost = branch.Cost(h);
                long ema = branch.EmaForwardFlops(h);
                // The learnable copy: forward and both gradients; the EMA copy: forward and the input gradient only.
                double gflop = (3.0 * (cost.ForwardFlops - ema) + 2.0 * ema) * batchSize / 1e9;
                results.Add(Time(j, "MAN copies", h, batchSize, repeats, gflop, x => branch.call(x), network.Family, backwardFromOutput: true));
                features = cost.Output;
            }
            var head = trainer.Heads[j];
            if (head is InfoProHead infoPro)
            {
                var cost = infoPro.Cost(features);
                double decoderFlops = DecoderFlops(features, image);
                if (infoPro.ReconstructionWeight != 0)
                    results.Add(Time(j, "decoder", features, batchSize, repeats, 3.0 * decoderFlops * batchSize / 1e9,
                        x => nn.functional.binary_cross_entropy(infoPro.Reconstruct(x), images.sigmoid()), network.Family));
                if (infoPro.ClassificationWeight != 0)
                    results.Add(Time(j, "classifier", features, batchSize, repeats,
                        3.0 * (cost.ForwardFlops - (infoPro.ReconstructionWeight != 0 ? decoderFlops : 0)) * batchSize / 1e9,
                        x => infoPro.Mode == InfoProLossMode.CrossEntropy
                            ? nn.functional.cross_entropy(MixedPrecision.Float32(infoPro.call(x)), labels)
                            : SupervisedContrastiveLoss.Compute(infoPro.call(x), labels), network.Family));
            }
            else
            {
                double flops = head is IHasCost c ? c.Cost(features).ForwardFlops : 0;
                results.Add(Time(j, "head", features, batchSize, repeats, 3.0 * flops * batchSize / 1e9, x => head.Loss(x, targets), network.Family));
            }
        }
        foreach (var p in trainer.Optimizer.parameters()) p.grad?.zero_();
        return results;
    }

    // InfoPro's decoder: C→12 and 12→image channels, 3x3, at the image's resolution (its cost model, restated).
    private static double DecoderFlops(FeatureShape features, FeatureShape image)
    {
        var up = new FeatureShape(features.Channels, image.Height, image.Width);
        var mid = new FeatureShape(12, image.Height, image.Width);
        return LayerCost.ConvFlops(up, mid, 3) + LayerCost.ConvFlops(mid, image, 3);
    }

    private static HeadPartProfile Time(int segment, string part, FeatureShape input, int batchSize, int repeats, double gflop,
        Func<Tensor, Tensor> run, NetworkFamily family, bool backwardFromOutput = false)
    {
        var forward = new List<double>();
        var backward = new List<double>();
        for (int r = 0; r < repeats + 1; r++)
        {
            using var scope = NewDisposeScope();
            // Features in the layout the units hand over in training (channels-last for CIFAR networks on the CPU by default).
            var x = ActivationLayouts.ForNetwork(randn(batchSize, input.Channels, input.Height, input.Width), family, ActivationLayouts.DefaultLayout)
                .requires_grad_(true);
            var clock = Stopwatch.StartNew();
            var y = run(x);
            if (!backwardFromOutput) _ = y.item<float>();
            double f = clock.Elapsed.TotalMilliseconds;
            var g = backwardFromOutput ? randn_like(y) : null;
            clock.Restart();
            if (g is null) y.backward(); else y.backward(new[] { g });
            double b = clock.Elapsed.TotalMilliseconds;
            if (r == 0) continue; // warm-up
            forward.Add(f);
            backward.Add(b);
        }
        return new HeadPartProfile(segment, part, input, Median(forward), Median(backward), gflop);
    }

    private static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}
