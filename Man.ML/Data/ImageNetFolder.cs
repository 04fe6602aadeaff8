// The ImageNet folder layout: ROOT/train/<wnid>/*.JPEG, and ROOT/val either with the same class folders or flat with a
// label file ("FILE LABEL" per line, LABEL a class folder name or a 0-based index; Kaggle's LOC_val_solution.csv works
// too). Images stay on disk: only paths and labels are held, decoding happens batch by batch (ImageBatchLoader).
namespace Man.ML.Data;

/// <summary>Labelled image files: paths, class indices and class names.</summary>
public sealed class ImageFileSet
{
    private static readonly string[] Extensions = { ".jpeg", ".jpg", ".png", ".bmp", ".webp" };

    /// <summary>Image paths, index for index with <see cref="Labels"/>.</summary>
    public IReadOnlyList<string> Paths { get; }

    /// <summary>Class indices.</summary>
    public IReadOnlyList<int> Labels { get; }

    /// <summary>Class names (folder names, for example ImageNet wnids), sorted ordinally.</summary>
    public IReadOnlyList<string> ClassNames { get; }

    /// <summary>Where the images came from, for messages and metrics.</summary>
    public string Source { get; }

    /// <summary>Number of images.</summary>
    public int Count => Paths.Count;

    /// <summary>Wraps paths and labels.</summary>
    public ImageFileSet(IReadOnlyList<string> paths, IReadOnlyList<int> labels, IReadOnlyList<string> classNames, string source)
    {
        if (paths.Count != labels.Count) throw new ArgumentException("One label per path is needed.", nameof(labels));
        if (labels.Any(l => l < 0 || l >= classNames.Count)) throw new ArgumentException("Every label must index a class name.", nameof(labels));
        (Paths, Labels, ClassNames, Source) = (paths, labels, classNames, source);
    }

    /// <summary>Images <paramref name="start"/> to <paramref name="start"/> + <paramref name="count"/>.</summary>
    public ImageFileSet Slice(int start, int count, string? source = null)
    {
        SliceRanges.CheckSlice(start, count, Count);
        return new ImageFileSet(Paths.Skip(start).Take(count).ToArray(), Labels.Skip(start).Take(count).ToArray(), ClassNames,
            source ?? $"{Source}[{start}..{start + count})");
    }

    /// <summary><paramref name="count"/> images evenly spread over the set (with images sorted by class, every class keeps its share).</summary>
    public ImageFileSet Spread(int count)
    {
        if (count < 1 || count > Count) throw new ArgumentOutOfRangeException(nameof(count), $"Cannot take {count} of {Count} images.");
        var picks = Enumerable.Range(0, count).Select(i => (int)((long)i * Count / count)).ToArray();
        return new ImageFileSet(picks.Select(i => Paths[i]).ToArray(), picks.Select(i => Labels[i]).ToArray(), ClassNames,
            $"{count} images spread over {Source}");
    }

    /// <summary>Reads DIR/&lt;class&gt;/&lt;image&gt; (classes sorted ordinally, images sorted by name).</summary>
    /// <param name="directory">The folder of class folders.</param>
    /// <param name="classNames">Classes to use (for a validation folder: the training classes); null: the folder's own.</param>
    /// <exception cref="DirectoryNotFoundException">The folder does not exist.</exception>
    /// <exception cref="InvalidDataException">No class folders or no images, or a class unknown to <paramref name="classNames"/>.</exception>
    public static ImageFileSet ReadClassFolders(string directory, IReadOnlyList<string>? classNames = null)
    {
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"Image folder '{directory}' does not exist.");
        var folders = Directory.GetDirectories(directory).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToArray();
        if (folders.Length == 0) throw new InvalidDataException($"Image folder '{directory}' holds no class folders (expected {directory}/<class>/<image>).");
        classNames ??= folders;
        var index = classNames.Select((name, i) => (name, i)).ToDictionary(p => p.name, p => p.i, StringComparer.Ordinal);
        var paths = new List<string>();
        var labels = new List<int>();
        foreach (var folder in folders)
        {
            if (!index.TryGetValue(folder, out int label))
                throw new InvalidDataException($"Class folder '{Path.Combine(directory, folder)}' is not one of the {classNames.Count} training classes.");
            foreach (var file in Directory.GetFiles(Path.Combine(directory, folder)).Where(IsImage).Order(StringComparer.Ordinal))
            {
                paths.Add(file);
                labels.Add(label);
            }
        }
        if (paths.Count == 0) throw new InvalidDataException($"Image folder '{directory}' holds no images ({string.Join(", ", Extensions)}).");
        return new ImageFileSet(paths, labels, classNames, directory);
    }

    /// <summary>
    /// Reads a flat folder of images labelled by <paramref name="labelFile"/>: one "FILE LABEL" per line (space, tab or
    /// comma separated; FILE with or without extension; LABEL a class name or a 0-based index; for Kaggle's CSV the
    /// first word of the prediction string). A header line is skipped.
    /// </summary>
    /// <exception cref="InvalidDataException">A line names an unknown class or file, or an image has no label.</exception>
    public static ImageFileSet ReadLabelFile(string directory, string labelFile, IReadOnlyList<string> classNames)
    {
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"Image folder '{directory}' does not exist.");
        if (!File.Exists(labelFile)) throw new FileNotFoundException($"Label file '{labelFile}' does not exist.", labelFile);
        var index = classNames.Select((name, i) => (name, i)).ToDictionary(p => p.name, p => p.i, StringComparer.Ordinal);
        var files = Directory.GetFiles(directory).Where(IsImage).ToDictionary(f => Path.GetFileNameWithoutExtension(f), f => f, StringComparer.Ordinal);
        var labelled = new SortedDictionary<string, int>(StringComparer.Ordinal);
        int lineNumber = 0;
        foreach (var line in File.ReadLines(labelFile))
        {
            lineNumber++;
            var words = line.Split(new[] { ' ', '\t', ',' }, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (words.Length == 0) continue;
            string where = $"label file '{labelFile}', line {lineNumber}";
            if (words.Length < 2) throw new InvalidDataException($"{where}: expected 'FILE LABEL', got '{line.Trim()}'.");
            string label = words[1];
            int classIndex;
            if (index.TryGetValue(label, out int named)) classIndex = named;
            else if (int.TryParse(label, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int number)
                     && number < classNames.Count) classIndex = number;
            else if (lineNumber == 1) continue; // a header
            else
                throw new InvalidDataException(
                    $"{where}: label '{label}' is neither one of the {classNames.Count} classes nor an index below {classNames.Count}.");
            string name = Path.GetFileNameWithoutExtension(words[0]);
            if (!files.ContainsKey(name)) throw new InvalidDataException($"{where}: image '{words[0]}' is not in '{directory}'.");
            labelled[name] = classIndex;
        }
        var missing = files.Keys.Where(k => !labelled.ContainsKey(k)).Order(StringComparer.Ordinal).FirstOrDefault();
        if (missing is not null) throw new InvalidDataException($"Image '{files[missing]}' has no line in label file '{labelFile}'.");
        if (labelled.Count == 0) throw new InvalidDataException($"Label file '{labelFile}' labels no image of '{directory}'.");
        return new ImageFileSet(labelled.Keys.Select(k => files[k]).ToArray(), labelled.Values.ToArray(), classNames, directory);
    }

    private static bool IsImage(string path) => Extensions.Contains(Path.GetExtension(path).ToLowerInvariant());
}

/// <summary>ImageNet's folder layout: ROOT/train and ROOT/val.</summary>
public static class ImageNetFolder
{
    /// <summary>Label files looked for beside a flat validation folder, in this order.</summary>
    public static IReadOnlyList<string> LabelFileNames { get; } = new[] { "val_labels.txt", "val.txt", "LOC_val_solution.csv", "labels.txt" };

    /// <summary>
    /// Reads ROOT/train (class folders) and, when present, ROOT/val: class folders, or flat images with a label file
    /// (<paramref name="valLabels"/>, else the first of <see cref="LabelFileNames"/> in ROOT or ROOT/val).
    /// </summary>
    /// <exception cref="DirectoryNotFoundException">ROOT/train is missing.</exception>
    /// <exception cref="InvalidDataException">ROOT/val is flat and no label file is found, or the files disagree.</exception>
    public static (ImageFileSet Train, ImageFileSet? Validation) Read(string root, string? valLabels = null)
    {
        var trainDir = Path.Combine(root, "train");
        if (!Directory.Exists(trainDir))
            throw new DirectoryNotFoundException($"'{root}' is not an ImageNet-layout folder: '{trainDir}' (train/<class>/<image>) does not exist.");
        var train = ReadClassFolders(trainDir);
        var valDir = Path.Combine(root, "val");
        if (!Directory.Exists(valDir)) return (train, null);
        return (train, ReadValidation(valDir, train.ClassNames, valLabels, root));
    }

    /// <summary>Reads a validation folder with the training classes: class folders, or flat images with a label file.</summary>
    public static ImageFileSet ReadValidation(string valDir, IReadOnlyList<string> classNames, string? valLabels = null, string? root = null)
    {
        if (Directory.GetDirectories(valDir).Length > 0 && valLabels is null) return ImageFileSet.ReadClassFolders(valDir, classNames);
        var labelFile = valLabels
            ?? LabelFileNames.SelectMany(n => new[] { Path.Combine(root ?? valDir, n), Path.Combine(valDir, n) }).FirstOrDefault(File.Exists)
            ?? throw new InvalidDataException(
                $"Validation folder '{valDir}' has no class folders and no label file ({string.Join(", ", LabelFileNames)} beside or inside it); " +
                "give one with --val-labels.");
        return ImageFileSet.ReadLabelFile(valDir, labelFile, classNames);
    }

    private static ImageFileSet ReadClassFolders(string dir) => ImageFileSet.ReadClassFolders(dir);
}
