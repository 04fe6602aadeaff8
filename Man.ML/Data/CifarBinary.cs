// The CIFAR-10 "binary version" layout: records of 1 label byte (0-9) then 3,072 pixel bytes (1,024 red, 1,024 green,
// 1,024 blue, each 32x32 row-major). Any number of files, any number of records per file; malformed input is an
// InvalidDataException naming the file and the record.

namespace Man.ML.Data;

/// <summary>Reads CIFAR-10 binary files.</summary>
public static class CifarBinary
{
    /// <summary>Side of a CIFAR image.</summary>
    public const int ImageSide = 32;

    /// <summary>Pixel bytes per record.</summary>
    public const int PixelBytes = 3 * ImageSide * ImageSide;

    /// <summary>Bytes per record (label + pixels).</summary>
    public const int RecordBytes = 1 + PixelBytes;

    /// <summary>Number of classes.</summary>
    public const int ClassCount = 10;

    // A CIFAR-10 batch file is 30.7 MB; anything past 2 GiB is not one, and is refused before it is read.
    private const long MaxFileBytes = int.MaxValue;

    /// <summary>The CIFAR-10 class names in label order.</summary>
    public static IReadOnlyList<string> DefaultClassNames { get; } = new[]
    {
        "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
    };

    /// <summary>
    /// Expands files and folders into the list of files to read. A folder contributes its <c>data_batch_*.bin</c> files
    /// when it has any (so the official <c>test_batch.bin</c> beside them is not mixed into training), else all its
    /// <c>*.bin</c> files, in name order.
    /// </summary>
    /// <exception cref="FileNotFoundException">A path does not exist, or a folder holds no .bin file.</exception>
    public static IReadOnlyList<string> ResolveFiles(IEnumerable<string> paths)
    {
        var files = new List<string>();
        foreach (var path in paths)
        {
            if (File.Exists(path)) { files.Add(path); continue; }
            if (!Directory.Exists(path)) throw new FileNotFoundException($"Data path '{path}' does not exist.", path);
            var found = Directory.GetFiles(path, "data_batch_*.bin");
            if (found.Length == 0) found = Directory.GetFiles(path, "*.bin");
            if (found.Length == 0) throw new FileNotFoundException($"Folder '{path}' holds no CIFAR .bin file.", path);
            Array.Sort(found, StringComparer.Ordinal);
            files.AddRange(found);
        }
        if (files.Count == 0) throw new FileNotFoundException("No CIFAR data files were given.");
        return files;
    }

    /// <summary>Reads and concatenates CIFAR-10 binary files (or folders of them, see <see cref="ResolveFiles"/>).</summary>
    /// <exception cref="FileNotFoundException">A file or folder does not exist.</exception>
    /// <exception cref="InvalidDataException">A file is empty, truncated, or holds a label outside 0–9.</exception>
    public static LabeledImages Read(IEnumerable<string> paths)
    {
        var files = ResolveFiles(paths);
        var contents = files.Select(f => (File: f, Bytes: InputFiles.ReadAllBytes(f, "CIFAR data file", MaxFileBytes))).ToList();
        long total = 0;
        foreach (var (file, bytes) in contents)
        {
            if (bytes.Length == 0) throw new InvalidDataException($"CIFAR file '{file}' is empty.");
            if (bytes.Length % RecordBytes != 0)
                throw new InvalidDataException(
                    $"CIFAR file '{file}' is truncated or not in the CIFAR-10 binary layout: {bytes.Length} bytes is not a whole number of " +
                    $"{RecordBytes}-byte records (record {bytes.Length / RecordBytes} has only {bytes.Length % RecordBytes} bytes).");
            total += bytes.Length / RecordBytes;
        }
        if (total > int.MaxValue / PixelBytes) throw new InvalidDataException("Too many CIFAR records to hold in memory.");

        var pixels = new byte[total * PixelBytes];
        var labels = new long[total];
        long n = 0;
        foreach (var (file, bytes) in contents)
        {
            int records = bytes.Length / RecordBytes;
            for (int r = 0; r < records; r++, n++)
            {
                int label = bytes[r * RecordBytes];
                if (label >= ClassCount)
                    throw new InvalidDataException($"CIFAR file '{file}', record {r}: label {label} is outside 0–9.");
                labels[n] = label;
                Buffer.BlockCopy(bytes, r * RecordBytes + 1, pixels, (int)(n * PixelBytes), PixelBytes);
            }
        }
        var classNames = ReadClassNames(files[0]) ?? DefaultClassNames;
        string source = files.Count == 1 ? files[0] : $"{files.Count} files in {Path.GetDirectoryName(Path.GetFullPath(files[0]))}";
        return new LabeledImages(
            tensor(pixels, new long[] { total, 3, ImageSide, ImageSide }, dtype: ScalarType.Byte),
            tensor(labels, dtype: ScalarType.Int64),
            classNames, source);
    }

    /// <summary>Writes images and labels in the CIFAR-10 binary layout (for tests).</summary>
    internal static void Write(string path, byte[] pixels, byte[] labels)
    {
        if (pixels.Length != labels.Length * PixelBytes)
            throw new ArgumentException($"Expected {labels.Length * PixelBytes} pixel bytes for {labels.Length} records.", nameof(pixels));
        using var stream = File.Create(path);
        for (int r = 0; r < labels.Length; r++)
        {
            stream.WriteByte(labels[r]);
            stream.Write(pixels, r * PixelBytes, PixelBytes);
        }
    }

    // batches.meta.txt beside the data, one name a line, as the official archive ships it.
    private static IReadOnlyList<string>? ReadClassNames(string dataFile)
    {
        var meta = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(dataFile)) ?? ".", "batches.meta.txt");
        if (!File.Exists(meta)) return null;
        var names = File.ReadAllLines(meta).Select(l => l.Trim()).Where(l => l.Length > 0).ToArray();
        return names.Length == ClassCount ? names : null;
    }
}
