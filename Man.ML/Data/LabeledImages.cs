// A data set held in memory as two tensors: uint8 images (N, C, H, W) and int64 labels (N). Small enough for CIFAR
// (50,000 images are 150 MB); batches are gathered from it by index.

namespace Man.ML.Data;

/// <summary>Labelled images in memory: uint8 pixels (N, C, H, W) and int64 class indices (N).</summary>
public sealed class LabeledImages : IDisposable
{
    /// <summary>Pixels, uint8, (N, C, H, W).</summary>
    public Tensor Images { get; }

    /// <summary>Class indices, int64, (N).</summary>
    public Tensor Labels { get; }

    /// <summary>Class names, index for index.</summary>
    public IReadOnlyList<string> ClassNames { get; }

    /// <summary>Where the images came from, for messages and metrics.</summary>
    public string Source { get; }

    /// <summary>Number of images.</summary>
    public int Count => (int)Images.shape[0];

    /// <summary>Wraps existing tensors (taken over: disposing this disposes them).</summary>
    public LabeledImages(Tensor images, Tensor labels, IReadOnlyList<string> classNames, string source)
    {
        if (images.dim() != 4) throw new ArgumentException("Images must be (N, C, H, W).", nameof(images));
        if (labels.dim() != 1 || labels.shape[0] != images.shape[0])
            throw new ArgumentException("Labels must be (N) with one label per image.", nameof(labels));
        Images = images;
        Labels = labels;
        ClassNames = classNames;
        Source = source;
    }

    /// <summary>Images <paramref name="start"/> to <paramref name="start"/> + <paramref name="count"/> (a copy).</summary>
    public LabeledImages Slice(int start, int count, string? source = null)
    {
        SliceRanges.CheckSlice(start, count, Count);
        return new LabeledImages(Images.narrow(0, start, count).clone(), Labels.narrow(0, start, count).clone(), ClassNames,
            source ?? $"{Source}[{start}..{start + count})");
    }

    /// <summary>Gathers the images and labels at <paramref name="indices"/>.</summary>
    public (Tensor Images, Tensor Labels) Gather(long[] indices)
    {
        using var index = tensor(indices, dtype: ScalarType.Int64);
        return (Images.index_select(0, index), Labels.index_select(0, index));
    }

    /// <summary>Concatenates several sets with the same image shape and classes.</summary>
    public static LabeledImages Concat(IReadOnlyList<LabeledImages> parts, string source)
    {
        if (parts.Count == 0) throw new ArgumentException("Nothing to concatenate.", nameof(parts));
        if (parts.Count == 1) return parts[0];
        var images = cat(parts.Select(p => p.Images).ToArray(), 0);
        var labels = cat(parts.Select(p => p.Labels).ToArray(), 0);
        foreach (var p in parts) p.Dispose();
        return new LabeledImages(images, labels, parts[0].ClassNames, source);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Images.Dispose();
        Labels.Dispose();
    }
}

internal static class SliceRanges
{
    /// <summary>Images start..start + count of a set of <paramref name="total"/>, or the error naming them.</summary>
    public static void CheckSlice(int start, int count, int total)
    {
        if (start < 0 || count < 0 || start + count > total)
            throw new ArgumentOutOfRangeException(nameof(count), $"Cannot take images {start}..{start + count} of {total}.");
    }
}
