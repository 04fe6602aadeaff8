// Scoring a trained backbone: per-batch scopes under no_grad, batch norm in evaluation mode.
using Man.ML.Data;
using Man.ML.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Training;

/// <summary>Accuracy and mean cross-entropy on a data set.</summary>
public sealed record EvaluationResult(double Accuracy, double Loss, int Count);

/// <summary>Evaluates networks on labelled images.</summary>
public static class Evaluation
{
    /// <summary>Scores <paramref name="data"/> with <paramref name="network"/> (left in evaluation mode).</summary>
    public static EvaluationResult Evaluate(UnitChainNetwork network, LabeledImages data, Normalization normalization,
        int batchSize, Device device, CancellationToken cancellation = default)
    {
        network.eval();
        using var noGrad = no_grad();
        long correct = 0;
        double lossSum = 0;
        for (int start = 0; start < data.Count; start += batchSize)
        {
            cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            int count = Math.Min(batchSize, data.Count - start);
            var x = normalization.Apply(data.Images.narrow(0, start, count).to_type(ScalarType.Float32).div_(255f)).to(device);
            var y = data.Labels.narrow(0, start, count).to(device);
            var logits = network.call(x);                                           // (B, classes)
            correct += logits.argmax(1).eq(y).sum().item<long>();
            lossSum += nn.functional.cross_entropy(logits, y, reduction: nn.Reduction.Sum).item<float>();
        }
        return new EvaluationResult(data.Count == 0 ? 0 : (double)correct / data.Count, data.Count == 0 ? 0 : lossSum / data.Count, data.Count);
    }
}
