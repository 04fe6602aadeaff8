// Where a run's batches come from: labelled images held in memory (CIFAR-10, SVHN, STL-10; augmented on the training
// thread exactly as before) or image files decoded ahead on background threads (the ImageNet layout). The epoch loop
// sees only this interface.
using Man.ML.Data;
using Man.ML.Models;

namespace Man.ML.Training;

/// <summary>One epoch of a run: the seed, the epoch's index and its batches as ranges of positions in the epoch's order.</summary>
internal sealed record EpochSpec(int Seed, int Epoch, IReadOnlyList<(int Start, int End)> Batches)
{
    /// <summary>
    /// The epoch's seeded draws over <paramref name="count"/> images: their order, and the generator augmentation
    /// continues with after drawing it.
    /// </summary>
    public (long[] Order, Random Random) Draw(int count)
    {
        var random = new Random(unchecked(Seed * 1_000_003 + Epoch));
        return (Permutation(count, random), random);
    }

    /// <summary>A Fisher–Yates permutation of 0..n−1 drawn from <paramref name="random"/>.</summary>
    public static long[] Permutation(int n, Random random)
    {
        var order = new long[n];
        for (int i = 0; i < n; i++) order[i] = i;
        for (int i = n - 1; i > 0; i--)
        {
            int j = random.Next(i + 1);
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }
}

internal interface ITrainingSource
{
    int Count { get; }

    /// <summary>Side of the network input.</summary>
    int ImageSize { get; }

    IReadOnlyList<string> ClassNames { get; }

    /// <summary>Seconds the last epoch waited for batches.</summary>
    double WaitSeconds { get; }

    /// <summary>Whether an image's augmentation depends on its position in the epoch's order alone (not on the images
    /// drawn before it), so a rank may read just its shard's positions.</summary>
    bool DrawsByPosition => false;

    /// <summary>The epoch's batches, created when MoveNext is called (so inside the caller's dispose scope).</summary>
    IEnumerator<(Tensor Images, Tensor Labels)> Epoch(EpochSpec epoch, CancellationToken cancellation);

    EvaluationResult Evaluate(UnitChainNetwork network, int batchSize, Device device, CancellationToken cancellation);
}

internal sealed class InMemorySource(LabeledImages data, ImageAugmentation augmentation, Normalization normalization) : ITrainingSource
{
    public int Count => data.Count;
    public int ImageSize => (int)data.Images.shape[2];
    public IReadOnlyList<string> ClassNames => data.ClassNames;
    public double WaitSeconds => 0;

    public IEnumerator<(Tensor Images, Tensor Labels)> Epoch(EpochSpec epoch, CancellationToken cancellation)
    {
        var (order, random) = epoch.Draw(Count);
        foreach (var (start, end) in epoch.Batches)
        {
            var (pixels, labels) = data.Gather(order[start..end]);
            yield return (augmentation.Apply(pixels, random, normalization), labels);
        }
    }

    public EvaluationResult Evaluate(UnitChainNetwork network, int batchSize, Device device, CancellationToken cancellation) =>
        Evaluation.Evaluate(network, data, normalization, batchSize, device, cancellation);
}

internal sealed class FileSource(ImageFileSet files, ImageNetTransform transform, int workers) : ITrainingSource
{
    private readonly ImageBatchLoader loader = new(files, transform, workers);

    public int Count => files.Count;
    public int ImageSize => transform.CropSize;
    public IReadOnlyList<string> ClassNames => files.ClassNames;
    public double WaitSeconds => loader.WaitSeconds;
    public bool DrawsByPosition => true;

    public IEnumerator<(Tensor Images, Tensor Labels)> Epoch(EpochSpec epoch, CancellationToken cancellation) =>
        loader.Batches(epoch.Draw(Count).Order, epoch.Batches, train: true, epoch.Seed, epoch.Epoch, cancellation).GetEnumerator();

    public EvaluationResult Evaluate(UnitChainNetwork network, int batchSize, Device device, CancellationToken cancellation) =>
        Evaluation.Evaluate(network, loader, files.Count, batchSize, device, cancellation);
}
