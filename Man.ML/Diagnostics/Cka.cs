// Linear centred kernel alignment (Kornblith et al., 2019) between two representations of the same images, with the
// minibatch estimator of Nguyen et al. (2021): CKA = ΣHSIC₁(K, L) / √(ΣHSIC₁(K, K)·ΣHSIC₁(L, L)) over minibatches, where
// HSIC₁ is the unbiased estimator (Song et al., 2012) on each minibatch's Gram matrices K = XXᵀ, L = YYᵀ. Memory is
// bounded by the minibatch (n×n Gram matrices), whatever the number of images; representations are the flattened unit
// outputs.
using Man.ML.Data;
using Man.ML.Models;
using Man.ML.Backend;

namespace Man.ML.Diagnostics;

/// <summary>Linear CKA.</summary>
public static class Cka
{
    /// <summary>Unbiased HSIC of two n×n Gram matrices (n ≥ 4), in float64.</summary>
    public static double UnbiasedHsic(Tensor k, Tensor l)
    {
        using var scope = NewDisposeScope();
        long n = k.shape[0];
        if (n < 4) throw new InvalidOptionException("batch size", $"The unbiased HSIC needs at least 4 samples per minibatch (got {n}).");
        var eye = TorchSharp.torch.eye(n, dtype: ScalarType.Float64, device: k.device);
        var kt = k.to_type(ScalarType.Float64) * eye.SubtractedFrom(1);   // zero diagonals
        var lt = l.to_type(ScalarType.Float64) * eye.SubtractedFrom(1);
        var trace = (kt * lt.t()).sum();                         // tr(K̃L̃)
        var sums = (kt.sum() * lt.sum()).DividedBy((n - 1) * (n - 2));
        var cross = kt.sum(dim: 0).dot(lt.sum(dim: 1)).Times(2).DividedBy(n - 2);      // 2·1ᵀK̃L̃1/(n−2)
        return (trace.Plus(sums) - cross).DividedBy(n * (n - 3)).item<double>();
    }

    /// <summary>Accumulates the minibatch estimator.</summary>
    internal sealed class Accumulator
    {
        private double xy, xx, yy;

        /// <summary>Adds one minibatch: representations (n, …) of the same n images.</summary>
        public void Add(Tensor x, Tensor y)
        {
            using var scope = NewDisposeScope();
            var fx = x.reshape(x.shape[0], -1).to_type(ScalarType.Float64);
            var fy = y.reshape(y.shape[0], -1).to_type(ScalarType.Float64);
            var k = fx.matmul(fx.t());
            var l = fy.matmul(fy.t());
            xy += UnbiasedHsic(k, l);
            xx += UnbiasedHsic(k, k);
            yy += UnbiasedHsic(l, l);
        }

        /// <summary>The CKA so far.</summary>
        public double Value => xy / Math.Sqrt(xx * yy);
    }

    /// <summary>CKA of two representations given whole (split into minibatches of <paramref name="batchSize"/>).</summary>
    public static double Compute(Tensor x, Tensor y, int batchSize = 256)
    {
        var acc = new Accumulator();
        for (long start = 0; start < x.shape[0]; start += batchSize)
        {
            long count = Math.Min(batchSize, x.shape[0] - start);
            if (count < 4) break;
            acc.Add(x.narrow(0, start, count), y.narrow(0, start, count));
        }
        return acc.Value;
    }

    /// <summary>Per-unit CKA between <paramref name="model"/> and <paramref name="reference"/> (same architecture) on <paramref name="data"/>.</summary>
    public static double[] PerUnit(UnitChainNetwork model, UnitChainNetwork reference, LabeledImages data, Normalization normalization, int batchSize = 256)
    {
        if (model.Units.Count != reference.Units.Count)
            throw new InvalidOptionException("reference",
                $"The networks have {model.Units.Count} and {reference.Units.Count} units; " +
                $"CKA compares unit by unit.");
        var accumulators = model.Units.Select(_ => new Accumulator()).ToArray();
        // Both networks see the same minibatches, one after the other, so only one batch of activations is alive at a time.
        for (int start = 0; start + 4 <= data.Count; start += batchSize)
        {
            int count = Math.Min(batchSize, data.Count - start);
            if (count < 4) break;
            using var slice = data.Slice(start, count);
            var mine = new List<Tensor>();
            Representations.ForEachBatch(model, slice, normalization, count, (outputs, _) =>
                mine.AddRange(outputs.Select(o => o.detach().clone().DetachFromDisposeScope())));
            Representations.ForEachBatch(reference, slice, normalization, count, (outputs, _) =>
            {
                for (int u = 0; u < outputs.Count; u++) accumulators[u].Add(mine[u], outputs[u]);
            });
            foreach (var t in mine) t.Dispose();
        }
        return accumulators.Select(a => a.Value).ToArray();
    }
}
