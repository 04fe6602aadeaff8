// Per-epoch curves as TensorBoard event files, written by TorchSharp's SummaryWriter (the TFRecord framing, masked
// CRC-32C and the Event protocol buffer are TorchSharp's). Every event gets an explicit wall time in seconds; the
// file's first record (the format version) carries TorchSharp's own wall time, which is in .NET ticks, so TensorBoard's
// "relative" time axis starts far off: read the curves on the step (epoch) axis.
using TorchSharp.Modules;

namespace Man.ML.Training;

/// <summary>Writes a run's per-epoch figures into a TensorBoard log folder.</summary>
public sealed class TensorBoardLog
{
    private readonly SummaryWriter writer;

    /// <summary>Opens a new event file in <paramref name="directory"/> (created when missing).</summary>
    /// <exception cref="IOException">The folder cannot be created or written.</exception>
    public TensorBoardLog(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        try
        {
            System.IO.Directory.CreateDirectory(directory);
            writer = torch.utils.tensorboard.SummaryWriter(directory);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new IOException($"Cannot write TensorBoard logs into '{directory}': {e.Message}", e);
        }
    }

    /// <summary>The folder the event file is in.</summary>
    public string Directory => writer.LogDir;

    /// <summary>
    /// One epoch's figures, at step <see cref="EpochMetrics.Epoch"/>: <c>loss/train</c>, <c>accuracy/train</c>,
    /// <c>loss/validation</c>, <c>accuracy/validation</c> and <c>accuracy/validation_top5</c> (when evaluated),
    /// <c>learning_rate</c>, <c>seconds/epoch</c> and <c>local_loss/segment_NN</c> for each segment's local loss.
    /// </summary>
    public void Write(EpochMetrics metrics)
    {
        ArgumentNullException.ThrowIfNull(metrics);
        long wallTime = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        void Add(string tag, double value) => writer.add_scalar(tag, (float)value, metrics.Epoch, wallTime);
        Add("loss/train", metrics.TrainLoss);
        Add("accuracy/train", metrics.TrainAccuracy);
        if (metrics.ValLoss is { } valLoss) Add("loss/validation", valLoss);
        if (metrics.ValAccuracy is { } valAccuracy) Add("accuracy/validation", valAccuracy);
        if (metrics.ValTop5Accuracy is { } top5) Add("accuracy/validation_top5", top5);
        Add("learning_rate", metrics.Lr);
        Add("seconds/epoch", metrics.Seconds);
        for (int s = 0; s < metrics.SegmentLosses.Length; s++) Add($"local_loss/segment_{s:D2}", metrics.SegmentLosses[s]);
    }
}
