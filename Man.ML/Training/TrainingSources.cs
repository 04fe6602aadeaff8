// Where a run's batches come from: labelled images held in memory (CIFAR-10, SVHN, STL-10; augmented on the training
// thread exactly as before) or image files decoded ahead on background threads (the ImageNet layout). The epoch loop
// sees only this interface.
using Man.ML.Data;
using Man.ML.Models;
using static TorchSharp.torch;

namespace Man.ML.Training;

internal interface ITrainingSource
{
    int Count { get; }

    /// <summary>Side of the network input.</summary>
    int ImageSize { get; }

    IReadOnlyList<string> ClassNames { get; }

    /// <summary>Seconds the last epoch waited for batches.</summary>
    double WaitSeconds { get; }

    /// <summary>The epoch's batches, created when MoveNext is called (so inside the caller's dispose scope).</summary>
    IEnumerator<(Tensor Images, Tensor Labels)> Epoch(long[] order, IReadOnlyList<(int Start, int End)> ranges, Random random, int seed, int epoch,
        CancellationToken cancellation);

    EvaluationResult Evaluate(UnitChainNetwork network, int batchSize, Device device, CancellationToken cancellation);
}

internal sealed class InMemorySource(LabeledImages data, ImageAugmentation augmentation) : ITrainingSource
{
    public int Count => data.Count;
    public int ImageSize => (int)data.Images.shape[2];
    public IReadOnlyList<string> ClassNames => data.ClassNames;
    public double WaitSeconds => 0;

    public IEnumerator<(Tensor Images, Tensor Labels)> Epoch(long[] order, IReadOnlyList<(int Start, int End)> ranges, Random random, int seed, int epoch,
        CancellationToken cancellation)
    {
        foreach (var (start, end) in ranges)
        {
            var (pixels, labels) = data.Gather(order[start..end]);
            yield return (augmentation.Apply(pixels, random), labels);
        }
    }

    public EvaluationResult Evaluate(UnitChainNetwork network, int batchSize, Device device, CancellationToken cancellation) =>
        Evaluation.Evaluate(network, data, augmentation.Normalization, batchSize, device, cancellation);
}

internal sealed class FileSource(ImageFileSet files, ImageNetTransform transform, int workers) : ITrainingSource
{
    private readonly ImageBatchLoader loader = new(files, transform, workers);

    public int Count => files.Count;
    public int ImageSize => transform.CropSize;
    public IReadOnlyList<string> ClassNames => files.ClassNames;
    public double WaitSeconds => loader.WaitSeconds;

    public IEnumerator<(Tensor Images, Tensor Labels)> Epoch(long[] order, IReadOnlyList<(int Start, int End)> ranges, Random random, int seed, int epoch,
        CancellationToken cancellation) => loader.Batches(order, ranges, train: true, seed, epoch, cancellation).GetEnumerator();

    public EvaluationResult Evaluate(UnitChainNetwork network, int batchSize, Device device, CancellationToken cancellation) =>
        Evaluation.Evaluate(network, loader, files.Count, batchSize, device, cancellation);
}
