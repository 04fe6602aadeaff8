// Early stopping on a validation figure: a run stops once the figure has not improved by more than MinDelta for
// Patience epochs in a row, and hands back the weights of its best epoch (backbone parameters and batch-norm
// statistics, copied to the CPU when an epoch improves: one backbone's worth of memory). What ML.NET's
// ImageClassificationTrainer.EarlyStopping does, on a figure Man.ML measures after every epoch.
using Man.ML.Models;

namespace Man.ML.Training;

/// <summary>The validation figure early stopping watches.</summary>
public enum EarlyStoppingMetric
{
    /// <summary>Validation accuracy (higher is better).</summary>
    [ChoiceName("accuracy")]
    Accuracy,

    /// <summary>Validation cross-entropy (lower is better).</summary>
    [ChoiceName("loss")]
    Loss,
}

/// <summary>Stop when the validation figure has stalled, keeping the best epoch's weights.</summary>
/// <param name="Metric">The figure watched. Default validation accuracy.</param>
/// <param name="Patience">Epochs without an improvement after which training stops (at least 1). Default 5.</param>
/// <param name="MinDelta">The smallest change that counts as an improvement (accuracy in [0, 1], or loss), ≥ 0. Default 0.</param>
public sealed record EarlyStopping(EarlyStoppingMetric Metric = EarlyStoppingMetric.Accuracy, int Patience = 5, double MinDelta = 0)
{
    /// <summary>Checks the values.</summary>
    /// <exception cref="InvalidOptionException">Patience below 1 or a negative or non-finite MinDelta.</exception>
    public void Validate(string option)
    {
        if (Patience < 1) throw new InvalidOptionException(option, $"Early stopping's patience must be at least 1 epoch (got {Patience}).");
        if (!(MinDelta >= 0) || !double.IsFinite(MinDelta))
            throw new InvalidOptionException(option, FormattableString.Invariant($"Early stopping's MinDelta must be finite and ≥ 0 (got {MinDelta})."));
    }
}

/// <summary>Follows the watched figure epoch by epoch and keeps a copy of the best epoch's weights.</summary>
internal sealed class EarlyStoppingMonitor(EarlyStopping rule) : IDisposable
{
    private Dictionary<string, Tensor>? best;

    /// <summary>1-based epoch of the best figure so far (0 before any).</summary>
    public int BestEpoch { get; private set; }

    /// <summary>The best figure so far.</summary>
    public double BestValue { get; private set; }

    /// <summary>Epochs since the best one.</summary>
    public int EpochsWithoutImprovement { get; private set; }

    /// <summary>The watched figure of an epoch's metrics.</summary>
    public double ValueOf(EpochMetrics metrics) => rule.Metric == EarlyStoppingMetric.Accuracy
        ? metrics.ValAccuracy ?? throw new InvalidOperationException("Early stopping needs validation data.")
        : metrics.ValLoss ?? throw new InvalidOperationException("Early stopping needs validation data.");

    /// <summary>Records an epoch; copies the weights when it improves. Returns whether training should stop.</summary>
    public bool Observe(EpochMetrics metrics, UnitChainNetwork network)
    {
        double value = ValueOf(metrics);
        bool improved = BestEpoch == 0 || (rule.Metric == EarlyStoppingMetric.Accuracy
            ? value > BestValue + rule.MinDelta
            : value < BestValue - rule.MinDelta);
        if (improved)
        {
            BestEpoch = metrics.Epoch;
            BestValue = value;
            EpochsWithoutImprovement = 0;
            Snapshot(network);
        }
        else EpochsWithoutImprovement++;
        return EpochsWithoutImprovement >= rule.Patience;
    }

    private void Snapshot(UnitChainNetwork network)
    {
        DisposeSnapshot();
        using var noGrad = no_grad();
        best = network.state_dict().ToDictionary(p => p.Key, p => p.Value.detach().cpu().clone().DetachFromDisposeScope());
    }

    /// <summary>Puts the best epoch's weights back into <paramref name="network"/>.</summary>
    public void RestoreBest(UnitChainNetwork network)
    {
        if (best is null) return;
        using var noGrad = no_grad();
        foreach (var (name, tensor) in network.state_dict()) tensor.copy_(best[name]);
    }

    private void DisposeSnapshot()
    {
        if (best is null) return;
        foreach (var t in best.Values) t.Dispose();
        best = null;
    }

    public void Dispose() => DisposeSnapshot();
}
