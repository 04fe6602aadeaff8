// The data sets the paper trains on, as formats, augmentations and normalisations (docs/METHOD.md §4): CIFAR-10 (binary
// batches), SVHN cropped digits (.mat, MATLAB v5) and STL-10 (binary), each read into LabeledImages; and ImageNet
// (the folder layout, streamed from disk).

namespace Man.ML.Data;

/// <summary>A data set format with its training augmentation.</summary>
public sealed record DatasetKind(string Name, int ImageSize, int Classes, ImageAugmentation Augmentation,
    Normalization Normalization, Func<IReadOnlyList<string>, LabeledImages> Read)
{
    private static readonly Normalization Half = new(new[] { 0.5f, 0.5f, 0.5f }, new[] { 0.5f, 0.5f, 0.5f });

    /// <summary>CIFAR-10: binary batches, reflect-pad 4 + crop + flip, CIFAR normalisation.</summary>
    public static DatasetKind Cifar10 { get; } = new("cifar10", 32, 10, ImageAugmentation.Cifar, Normalization.Cifar, CifarBinary.Read);

    /// <summary>SVHN cropped digits: .mat files, zero-pad 2 + crop, no flip, mean = std = 0.5.</summary>
    public static DatasetKind Svhn { get; } = new("svhn", 32, 10, new ImageAugmentation(2, false, false), Half,
        paths => LabeledImages.Concat(paths.Select(SvhnMat.Read).ToList(), string.Join(", ", paths)));

    /// <summary>STL-10: binary X/y files, zero-pad 4 + crop 96 + flip, mean = std = 0.5.</summary>
    public static DatasetKind Stl10 { get; } = new("stl10", 96, 10, new ImageAugmentation(4, false, true), Half,
        paths => LabeledImages.Concat(paths.Select(Stl10Binary.Read).ToList(), string.Join(", ", paths)));

    /// <summary>
    /// ImageNet: image files in the ImageNet folder layout (<see cref="ImageNetFolder"/>), never held in memory;
    /// random-resized crop 224 + flip, ImageNet normalisation; 1000 classes.
    /// </summary>
    public static DatasetKind ImageNet { get; } = new("imagenet", 224, 1000,
        new ImageAugmentation(0, false, true), ImageNetTransform.ImageNetNormalization,
        _ => throw new NotSupportedException("ImageNet-layout data is read with ImageNetFolder.Read and streamed from disk, not loaded into memory."));

    /// <summary>Whether the data set is read as image files (ImageNet layout) rather than into memory.</summary>
    public bool IsImageFolder => ReferenceEquals(this, ImageNet);

    /// <summary>Every known kind.</summary>
    public static IReadOnlyList<DatasetKind> All { get; } = new[] { Cifar10, Svhn, Stl10, ImageNet };

    /// <summary>The kind called <paramref name="name"/>.</summary>
    /// <exception cref="InvalidOptionException">Unknown name; the message lists the known ones.</exception>
    public static DatasetKind Get(string name) => All.FirstOrDefault(k => k.Name == name.Trim().ToLowerInvariant())
        ?? throw new InvalidOptionException("dataset", $"Unknown data set '{name}'; expected one of: {string.Join(", ", All.Select(k => k.Name))}.");
}

/// <summary>SVHN's cropped-digit files (train_32x32.mat, test_32x32.mat): X is 32×32×3×N uint8, y is N×1 with 10 for the digit 0.</summary>
internal static class SvhnMat
{
    /// <summary>Reads one SVHN .mat file.</summary>
    /// <exception cref="InvalidDataException">The file lacks X or y, or their shapes disagree, or a label is outside 1–10.</exception>
    public static LabeledImages Read(string path)
    {
        var arrays = MatFile.Read(path);
        if (!arrays.TryGetValue("X", out var x) || !arrays.TryGetValue("y", out var y))
            throw new InvalidDataException($"SVHN file '{path}' must hold arrays X and y (found: {string.Join(", ", arrays.Keys)}).");
        if (x.Bytes is null || x.Dimensions.Length != 4 || x.Dimensions[2] != 3)
            throw new InvalidDataException($"SVHN file '{path}': X must be a uint8 array H×W×3×N (got {string.Join("×", x.Dimensions)}).");
        int h = x.Dimensions[0], w = x.Dimensions[1], n = x.Dimensions[3];
        var labelValues = y.Bytes is not null ? y.Bytes.Select(b => (double)b).ToArray() : y.Values;
        if (labelValues.Length != n)
            throw new InvalidDataException($"SVHN file '{path}': X holds {n} images but y holds {labelValues.Length} labels.");
        var labels = new long[n];
        for (int i = 0; i < n; i++)
        {
            double v = labelValues[i];
            if (v != Math.Floor(v) || v < 1 || v > 10) throw new InvalidDataException($"SVHN file '{path}', record {i}: label {v} is outside 1–10.");
            labels[i] = v == 10 ? 0 : (long)v;
        }
        // Column-major H×W×3×N to (N, 3, H, W): element (r, c, ch, i) sits at r + H·c + H·W·ch + H·W·3·i.
        using var raw = tensor(x.Bytes, new long[] { n, 3, w, h }, dtype: ScalarType.Byte);
        var images = raw.transpose(2, 3).contiguous();
        return new LabeledImages(images, tensor(labels, dtype: ScalarType.Int64),
            Enumerable.Range(0, 10).Select(d => d.ToString()).ToArray(), path);
    }
}

/// <summary>STL-10's binary files: *_X.bin holds N×3×96×96 uint8 with each channel column-major; *_y.bin holds labels 1–10.</summary>
internal static class Stl10Binary
{
    /// <summary>Side of an STL-10 image.</summary>
    public const int Side = 96;

    /// <summary>STL-10's class names.</summary>
    public static IReadOnlyList<string> ClassNames { get; } = new[]
    {
        "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
    };

    /// <summary>Reads an image file (…_X.bin, with its …_y.bin beside it), or a folder holding train_X.bin and train_y.bin.</summary>
    /// <exception cref="InvalidDataException">Sizes disagree, the image file is truncated, or a label is outside 1–10.</exception>
    public static LabeledImages Read(string path)
    {
        string xPath = Directory.Exists(path) ? Path.Combine(path, "train_X.bin") : path;
        if (!File.Exists(xPath)) throw new FileNotFoundException($"STL-10 image file '{xPath}' does not exist.", xPath);
        string name = Path.GetFileName(xPath);
        if (!name.EndsWith("_X.bin", StringComparison.Ordinal))
            throw new InvalidDataException($"STL-10 image file '{xPath}' should be named *_X.bin (its labels in *_y.bin beside it).");
        string yPath = Path.Combine(Path.GetDirectoryName(xPath)!, name[..^"_X.bin".Length] + "_y.bin");
        if (!File.Exists(yPath)) throw new FileNotFoundException($"STL-10 label file '{yPath}' (for '{xPath}') does not exist.", yPath);
        var pixels = InputFiles.ReadAllBytes(xPath, "STL-10 image file", Array.MaxLength);
        var labelBytes = InputFiles.ReadAllBytes(yPath, "STL-10 label file", Array.MaxLength);
        const int perImage = 3 * Side * Side;
        if (pixels.Length == 0 || pixels.Length % perImage != 0)
            throw new InvalidDataException($"STL-10 file '{xPath}' is truncated: " +
                $"{pixels.Length} bytes is not a whole number of {perImage}-byte images " +
                $"(image {pixels.Length / perImage} is incomplete).");
        int n = pixels.Length / perImage;
        if (labelBytes.Length != n)
            throw new InvalidDataException($"STL-10 files disagree: '{xPath}' holds {n} images, '{yPath}' holds {labelBytes.Length} labels.");
        var labels = new long[n];
        for (int i = 0; i < n; i++)
        {
            if (labelBytes[i] is < 1 or > 10) throw new InvalidDataException($"STL-10 file '{yPath}', record {i}: label {labelBytes[i]} is outside 1–10.");
            labels[i] = labelBytes[i] - 1;
        }
        using var raw = tensor(pixels, new long[] { n, 3, Side, Side }, dtype: ScalarType.Byte); // (N, 3, col, row)
        return new LabeledImages(raw.transpose(2, 3).contiguous(), tensor(labels, dtype: ScalarType.Int64), ClassNames, xPath);
    }
}
