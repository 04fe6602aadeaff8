// What a run reports, epoch by epoch and at the end. Serialised with snake_case names into metrics.json; these names
// are a contract (add, don't rename).
namespace Man.ML.Training;

/// <summary>Progress inside an epoch, after each mini-batch.</summary>
public sealed record BatchProgress(int Epoch, int Batch, int BatchesPerEpoch, float Loss, double LearningRate);

/// <summary>One epoch's figures.</summary>
public sealed record EpochMetrics
{
    /// <summary>1-based epoch number.</summary>
    public int Epoch { get; init; }

    /// <summary>Mean cross-entropy of the network's head over the epoch's training batches.</summary>
    public double TrainLoss { get; init; }

    /// <summary>Accuracy of the network's head on the (augmented) training batches, in [0, 1].</summary>
    public double TrainAccuracy { get; init; }

    /// <summary>Validation accuracy at the end of the epoch, in [0, 1]; null without validation data.</summary>
    public double? ValAccuracy { get; init; }

    /// <summary>Validation cross-entropy; null without validation data.</summary>
    public double? ValLoss { get; init; }

    /// <summary>Validation top-5 accuracy, in [0, 1]; null without validation data.</summary>
    public double? ValTop5Accuracy { get; init; }

    /// <summary>Seconds the training loop waited for decoded batches (0 for data held in memory).</summary>
    public double DataWaitSeconds { get; init; }

    /// <summary>Learning rate at the epoch's first iteration.</summary>
    public double Lr { get; init; }

    /// <summary>Wall time of the epoch's training (evaluation excluded), seconds.</summary>
    public double Seconds { get; init; }

    /// <summary>Wall time of the epoch's evaluation, seconds.</summary>
    public double EvalSeconds { get; init; }

    /// <summary>Mean local loss of each segment (the last is the network head's cross-entropy).</summary>
    public double[] SegmentLosses { get; init; } = Array.Empty<double>();

    /// <summary>Steps of this epoch dropped for a NaN or infinite loss or gradient (<see cref="Local.NonFinitePolicy.SkipStep"/>).</summary>
    public int SkippedSteps { get; init; }

    /// <summary>A distributed run's gradient exchange in this epoch (bytes, seconds, the share hidden behind compute);
    /// null in one process.</summary>
    public Distributed.CommunicationFigures? Communication { get; init; }
}

/// <summary>Figures at the end of a run: of the last epoch, or with early stopping of the best epoch, whose weights the run returns.</summary>
public sealed record FinalMetrics
{
    /// <summary>Validation accuracy of the returned weights (the last epoch's, or the best epoch's with early
    /// stopping); null without validation data.</summary>
    public double? ValAccuracy { get; init; }

    /// <summary>Validation top-5 accuracy of the returned weights; null without validation data.</summary>
    public double? ValTop5Accuracy { get; init; }

    /// <summary>Accuracy on each extra evaluation set after the last epoch, by name; null when none were given.</summary>
    public Dictionary<string, double>? TestAccuracy { get; init; }

    /// <summary>Training wall time over all epochs (evaluation excluded), seconds.</summary>
    public double TrainSeconds { get; init; }

    /// <summary>Training images per second over all epochs.</summary>
    public double ImagesPerSecond { get; init; }

    /// <summary>Parameters of the backbone (what inference uses).</summary>
    public long ParametersBackbone { get; init; }

    /// <summary>Parameters of the auxiliary heads and MAN copies (training only).</summary>
    public long ParametersAuxiliary { get; init; }

    /// <summary>With early stopping: the 1-based epoch whose weights were returned; null without early stopping.</summary>
    public int? BestEpoch { get; init; }

    /// <summary>Whether early stopping ended the run before its last epoch.</summary>
    public bool StoppedEarly { get; init; }

    /// <summary>Steps of the whole run dropped for a NaN or infinite loss or gradient (<see cref="Local.NonFinitePolicy.SkipStep"/>).</summary>
    public int SkippedSteps { get; init; }
}
