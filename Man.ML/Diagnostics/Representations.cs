// Representations of a trained backbone, unit by unit, for the paper's analyses (Figures 3-5): the globally pooled
// features after every unit, the full feature maps of one unit, batch by batch under no_grad in evaluation mode.
using Man.ML.Data;
using Man.ML.Models;
using Man.ML.Backend;

namespace Man.ML.Diagnostics;

/// <summary>Extracts unit outputs from a network.</summary>
public static class Representations
{
    /// <summary>
    /// Calls <paramref name="visit"/> for each batch of <paramref name="data"/> with every unit's output (B, C, H, W),
    /// index for index, and the batch's labels. Tensors are disposed after the call.
    /// </summary>
    public static void ForEachBatch(UnitChainNetwork network, LabeledImages data, Normalization normalization, int batchSize,
        Action<IReadOnlyList<Tensor>, Tensor> visit, Device? device = null)
    {
        device ??= CPU;
        network.eval();
        using var noGrad = no_grad();
        for (int start = 0; start < data.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            int count = Math.Min(batchSize, data.Count - start);
            var x = normalization.Apply(data.Images.narrow(0, start, count).to_type(ScalarType.Float32).DividedByInPlace(255)).to(device);
            var outputs = new List<Tensor>();
            foreach (var unit in network.Units)
            {
                x = unit.call(x);
                outputs.Add(x);
            }
            visit(outputs, data.Labels.narrow(0, start, count));
        }
    }

    /// <summary>Globally average-pooled features after every unit: per unit a (N, C) float array, row-major.</summary>
    public static float[][] PooledFeatures(UnitChainNetwork network, LabeledImages data, Normalization normalization, int batchSize = 256)
    {
        var perUnit = network.UnitInfos.Select(_ => new List<float>()).ToArray();
        ForEachBatch(network, data, normalization, batchSize, (outputs, _) =>
        {
            for (int u = 0; u < outputs.Count; u++)
                perUnit[u].AddRange(nn.functional.adaptive_avg_pool2d(outputs[u], 1).flatten(1).cpu().data<float>().ToArray());
        });
        return perUnit.Select(l => l.ToArray()).ToArray();
    }
}
