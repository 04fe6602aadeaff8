// Scoring a trained backbone: per-batch scopes under no_grad, batch norm in evaluation mode; top-1 and top-5 accuracy.
using Man.ML.Data;
using Man.ML.Models;
using Man.ML.Backend;

namespace Man.ML.Training;

/// <summary>Accuracy, top-5 accuracy and mean cross-entropy on a data set.</summary>
/// <param name="Accuracy">Top-1 accuracy in [0, 1].</param>
/// <param name="Loss">Mean cross-entropy.</param>
/// <param name="Count">Images scored.</param>
/// <param name="Top5Accuracy">Share of images whose label is among the five highest scores (1 with five classes or fewer).</param>
internal sealed record EvaluationResult(double Accuracy, double Loss, int Count, double Top5Accuracy);

/// <summary>Evaluates networks on labelled images.</summary>
internal static class Evaluation
{
    /// <summary>Scores <paramref name="data"/> with <paramref name="network"/> (left in evaluation mode).</summary>
    public static EvaluationResult Evaluate(UnitChainNetwork network, LabeledImages data, Normalization normalization,
        int batchSize, Device device, CancellationToken cancellation = default)
    {
        IEnumerable<(Tensor, Tensor)> Batches()
        {
            for (int start = 0; start < data.Count; start += batchSize)
            {
                int count = Math.Min(batchSize, data.Count - start);
                yield return (normalization.Apply(data.Images.narrow(0, start, count).to_type(ScalarType.Float32).DividedByInPlace(255)),
                    data.Labels.narrow(0, start, count));
            }
        }
        return Score(network, Batches(), data.Count, device, cancellation);
    }

    /// <summary>Scores image files with the evaluation crop of <paramref name="loader"/> (decoded ahead on its threads).</summary>
    internal static EvaluationResult Evaluate(UnitChainNetwork network, ImageBatchLoader loader, int count, int batchSize, Device device,
        CancellationToken cancellation = default)
    {
        var order = Enumerable.Range(0, count).Select(i => (long)i).ToArray();
        var ranges = Enumerable.Range(0, (count + batchSize - 1) / batchSize).Select(b => (b * batchSize, Math.Min(count, (b + 1) * batchSize))).ToList();
        return Score(network, loader.Batches(order, ranges, train: false, 0, 0, cancellation), count, device, cancellation);
    }

    /// <summary>Scores normalised batches (images float (B, C, H, W), labels int64 (B)) created as they are enumerated.</summary>
    internal static EvaluationResult Score(UnitChainNetwork network, IEnumerable<(Tensor Images, Tensor Labels)> batches, int total, Device device,
        CancellationToken cancellation)
    {
        network.eval();
        using var noGrad = no_grad();
        long correct = 0, top5 = 0;
        double lossSum = 0;
        using var enumerator = batches.GetEnumerator();
        while (true)
        {
            cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            if (!enumerator.MoveNext()) break;
            var x = enumerator.Current.Images.to(device);
            var logits = network.call(x);                                           // (B, classes)
            var y = enumerator.Current.Labels.to(logits.device); // a pipelined network ends on its last stage's device
            correct += logits.argmax(1).eq(y).sum().item<long>();
            int k = (int)Math.Min(5, logits.shape[1]);
            top5 += logits.topk(k, dim: 1).indexes.eq(y.unsqueeze(1)).any(1).sum().item<long>(); // (B, k) → (B)
            lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
        }
        return total == 0 ? new EvaluationResult(0, 0, 0, 0)
            : new EvaluationResult((double)correct / total, lossSum / total, total, (double)top5 / total);
    }
}
