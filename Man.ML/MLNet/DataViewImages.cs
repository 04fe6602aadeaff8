// The training and validation rows of an IDataView, read as the run goes rather than up front, so Fit's memory does
// not grow with the number of rows. One scan at the start reads only the label column (labels checked, row ids
// recorded: 16 bytes a row); images are decoded batch by batch on a background thread while the network trains.
// Shuffling is an exact seeded permutation of the rows every epoch, for any view (most cannot seek: LoadFromEnumerable,
// text files, databases): the permutation is cut into chunks of at most ShuffleBufferSize rows, and each chunk is
// gathered in one sequential pass over the view that decodes only that chunk's images (a cursor that does not call the
// image getter does not decode), then handed out in permuted order. Memory: one chunk and a few batches, whatever the
// row count; cost: ceil(rows / chunk) cheap passes per epoch. Crops and flips are drawn from (seed, epoch, row), so a
// run is the same whatever the thread timing.
using System.Collections.Concurrent;
using Man.ML.Data;
using Man.ML.Models;
using Man.ML.Training;
using Microsoft.ML;
using Microsoft.ML.Data;
using Man.ML.Backend;

namespace Man.ML.MLNet;

/// <summary>
/// Row buffers handed out and taken back, so decoding does not allocate one array a row: at 224×224 a row is 150 KB,
/// which .NET puts on the large-object heap, collected only with generation 2 — resident memory then grew with the rows
/// read (measured: docs/BENCHMARKS.md, "Streaming Fit"). The pool holds at most the rows alive at once.
/// </summary>
internal sealed class RowBufferPool(int length)
{
    private readonly ConcurrentBag<byte[]> free = new();

    public int Length => length;

    public byte[] Rent() => free.TryTake(out var buffer) ? buffer : new byte[length];

    public void Return(byte[] buffer)
    {
        if (buffer.Length == length) free.Add(buffer);
    }
}

/// <summary>Labelled image rows of an IDataView, read on demand.</summary>
internal sealed class DataViewImages
{
    private readonly IDataView data;
    private readonly DataViewSchema.Column label;
    private readonly ImageColumn image;
    private readonly string what;
    private readonly DataViewRowId[] ids;                 // every row's id, in the view's order
    private readonly HashSet<DataViewRowId>? included;    // null: every row

    public IReadOnlyList<string> ClassNames { get; }
    public LabelKeyValues? KeyValues { get; }

    /// <summary>Where the rows' pixel buffers come from; a consumer of <see cref="Rows"/> gives each back when done.</summary>
    public RowBufferPool Buffers { get; }
    public int Count => included?.Count ?? ids.Length;
    public int ImageSize => image.ImageSize;
    public string What => what;

    private DataViewImages(IDataView data, DataViewSchema.Column label, ImageColumn image, string what, DataViewRowId[] ids,
        HashSet<DataViewRowId>? included, IReadOnlyList<string> classNames, LabelKeyValues? keyValues)
    {
        this.data = data;
        this.label = label;
        this.image = image;
        this.what = what;
        this.ids = ids;
        this.included = included;
        ClassNames = classNames;
        KeyValues = keyValues;
        Buffers = new RowBufferPool(image.PixelCount);
    }

    /// <summary>Checks the columns and scans the labels of <paramref name="data"/> (images are not read here).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The label or image column is missing.</exception>
    /// <exception cref="ArgumentException">The view is empty, a column has a type Man.ML cannot read, or there are too few classes.</exception>
    /// <exception cref="InvalidDataException">A row's label is missing.</exception>
    public static DataViewImages Scan(IDataView data, string labelColumnName, string imageColumnName, int imageSize, string what,
        int? expectedClasses, CancellationToken cancellation, long maxPixels = ImageHeader.DefaultMaxPixels)
    {
        var labelColumn = data.Schema.GetColumnOrNull(labelColumnName)
            ?? throw new ArgumentOutOfRangeException(nameof(data),
                $"Label column '{labelColumnName}' was not found in the {what} (columns: {string.Join(", ", data.Schema.Select(c => c.Name))}).");
        // An empty view first: the key mapping below would make it "one class" and the message would mislead.
        using (var probe = data.GetRowCursor(Array.Empty<DataViewSchema.Column>()))
            if (!probe.MoveNext()) throw new ArgumentException($"The {what} holds no rows; at least 2 are needed.");
        if (labelColumn.Type is not KeyDataViewType)
        {
            // Any type MapValueToKey accepts becomes a key, classes in sorted order.
            var mapped = $"{labelColumnName}.Key";
            try
            {
                var mapping = new MLContext().Transforms.Conversion.MapValueToKey(mapped, labelColumnName,
                    keyOrdinality: Microsoft.ML.Transforms.ValueToKeyMappingEstimator.KeyOrdinality.ByValue);
                data = mapping.Fit(data).Transform(data);
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException)
            {
                throw new ArgumentException($"Label column '{labelColumnName}' has type {labelColumn.Type}, which cannot be mapped to a key: {e.Message}", e);
            }
            labelColumn = data.Schema[mapped];
        }
        var keyType = (KeyDataViewType)labelColumn.Type;
        if (keyType.Count is 0 or > int.MaxValue) throw new ArgumentException($"Label column '{labelColumnName}' is a key of unknown size.");
        int classes = (int)keyType.Count;
        if (classes < 2) throw new ArgumentException($"Label column '{labelColumnName}' has {classes} class; at least 2 are needed.");
        if (expectedClasses is { } n && n != classes)
            throw new ArgumentException($"The {what}'s label column '{labelColumnName}' has {classes} classes; the training data has {n}.");
        var keyValues = LabelKeyValues.FromColumn(labelColumn);
        var imageColumn = ImageColumn.Resolve(data.Schema, imageColumnName, imageSize, maxPixels);

        var ids = new List<DataViewRowId>();
        using (var cursor = data.GetRowCursor(new[] { labelColumn }))
        {
            var getLabel = cursor.GetGetter<uint>(labelColumn);
            var getId = cursor.GetIdGetter();
            uint key = 0;
            var id = default(DataViewRowId);
            while (cursor.MoveNext())
            {
                cancellation.ThrowIfCancellationRequested();
                getLabel(ref key);
                if (key == 0 || key > classes)
                    throw new InvalidDataException($"Label column '{labelColumnName}', row {cursor.Position}: " +
                        $"the label is missing or not one of the {classes} known classes.");
                getId(ref id);
                ids.Add(id);
            }
        }
        if (ids.Count < 2) throw new ArgumentException($"The {what} holds {ids.Count} rows; at least 2 are needed.");
        var names = keyValues?.Names() ?? Enumerable.Range(0, classes).Select(i => i.ToString()).ToArray();
        return new DataViewImages(data, labelColumn, imageColumn, what, ids.ToArray(), null, names, keyValues);
    }

    /// <summary>A seeded permutation's first round(fraction · n) rows held out (not stratified); the rest kept.</summary>
    public (DataViewImages Train, DataViewImages Validation) HoldOut(double fraction, int seed)
    {
        int held = (int)Math.Round(fraction * Count);
        if (held < 1 || Count - held < 2)
            throw new InvalidOptionException(nameof(ManImageClassificationTrainer.Options.ValidationSetFraction), FormattableString.Invariant(
                $"ValidationSetFraction {fraction} of {Count} training rows holds out {held}; at least 1 must be held out and 2 kept."));
        var order = EpochSpec.Permutation(ids.Length, new Random(seed));
        var heldIds = order.Take(held).Select(i => ids[i]).ToHashSet();
        var keptIds = order.Skip(held).Select(i => ids[i]).ToHashSet();
        return (With(keptIds, what), With(heldIds, $"validation set ({fraction:P0} of the training data)"));
    }

    private DataViewImages With(HashSet<DataViewRowId> rows, string source) =>
        new(data, label, image, source, ids, rows, ClassNames, KeyValues);

    /// <summary>
    /// The rows as (planar RGB uint8 3·S·S, class index), read on the calling thread. <paramref name="shuffle"/> null: in
    /// the view's order; else in a permutation drawn from it, gathered in chunks of <paramref name="chunkRows"/> rows (one
    /// sequential pass each). <paramref name="crop"/> gives each row's source rectangle from the row's id and the image
    /// size. <paramref name="select"/>, when given, picks rows by their 0-based index among the included rows (others are
    /// not decoded). Each row's pixels are rented from <see cref="Buffers"/>: return them there once used.
    /// </summary>
    public IEnumerable<(byte[] Pixels, long Label)> Rows(Random? shuffle, int chunkRows,
        Func<DataViewRowId, int, int, (int X, int Y, int W, int H)> crop, Func<int, bool>? select, CancellationToken cancellation)
    {
        if (shuffle is null)
        {
            foreach (var row in Pass(crop, index => select is null || select(index) ? 0 : -1, cancellation)) yield return row.Row;
            yield break;
        }
        var order = EpochSpec.Permutation(Count, shuffle);       // order[position] = included row index
        var positionOf = new int[Count];
        for (int p = 0; p < order.Length; p++) positionOf[order[p]] = p;
        for (int start = 0; start < Count; start += chunkRows)
        {
            int end = Math.Min(Count, start + chunkRows);
            var chunk = new (byte[] Pixels, long Label)[end - start];
            foreach (var (slot, row) in Pass(crop, index => positionOf[index] is var p && p >= start && p < end ? p - start : -1, cancellation))
                chunk[slot] = row;
            foreach (var row in chunk) yield return row;
        }
    }

    // One sequential pass: every included row whose slotOf(index) ≥ 0 is decoded and returned with its slot.
    private IEnumerable<(int Slot, (byte[] Pixels, long Label) Row)> Pass(Func<DataViewRowId, int, int, (int X, int Y, int W, int H)> crop,
        Func<int, int> slotOf, CancellationToken cancellation)
    {
        var imageSource = data.Schema[image.Name];
        var (pathColumns, describe) = ImageColumn.PathColumns(data.Schema);
        using var cursor = data.GetRowCursor(new[] { label, imageSource }.Concat(pathColumns).Distinct());
        var getLabel = cursor.GetGetter<uint>(label);
        var getId = cursor.GetIdGetter();
        var id = default(DataViewRowId);
        var read = image.CreateReader(cursor, describe(cursor), (w, h) => crop(id, w, h));
        uint key = 0;
        int index = -1;
        while (cursor.MoveNext())
        {
            cancellation.ThrowIfCancellationRequested();
            getId(ref id);
            if (included is not null && !included.Contains(id)) continue;
            index++;
            int slot = slotOf(index);
            if (slot < 0) continue;
            getLabel(ref key);
            var pixels = Buffers.Rent();
            read(cursor.Position, pixels);
            yield return (slot, (pixels, (long)key - 1));
        }
    }

    /// <summary>Per-channel mean and population standard deviation, in float64, over at most <paramref name="sampleSize"/>
    /// evenly spaced rows at the scoring crop.</summary>
    public Normalization MeasureNormalization(int sampleSize, Func<int, int, (int X, int Y, int W, int H)> scoringCrop, CancellationToken cancellation)
    {
        int n = Math.Min(Count, sampleSize);
        var picks = new HashSet<int>(Enumerable.Range(0, n).Select(i => (int)((long)i * Count / n)));
        var sum = new double[3];
        var squares = new double[3];
        long pixels = 0;
        int plane = ImageSize * ImageSize;
        foreach (var (bytes, _) in Rows(null, 0, (_, w, h) => scoringCrop(w, h), picks.Contains, cancellation))
        {
            for (int c = 0; c < 3; c++)
            {
                double s1 = 0, s2 = 0;
                for (int p = c * plane; p < (c + 1) * plane; p++)
                {
                    double v = bytes[p] / 255.0;
                    s1 += v;
                    s2 += v * v;
                }
                sum[c] += s1;
                squares[c] += s2;
            }
            Buffers.Return(bytes);
            pixels += plane;
        }
        var mean = sum.Select(v => v / pixels).ToArray();
        // A constant channel (a blank image set) keeps unit scale.
        var std = squares.Select((v, c) => Math.Sqrt(Math.Max(v / pixels - mean[c] * mean[c], 0))).Select(v => v > 1e-6 ? v : 1).ToArray();
        return new Normalization(mean.Select(v => (float)v).ToArray(), std.Select(v => (float)v).ToArray());
    }

    /// <summary>The id's 32-bit hash, for per-row random draws.</summary>
    public static int RowSeed(DataViewRowId id) => unchecked((int)(id.Low ^ (id.Low >> 32) ^ id.High ^ (id.High >> 32)));
}

/// <summary>An <see cref="ITrainingSource"/> over <see cref="DataViewImages"/>: batches decoded ahead on a background thread.</summary>
internal sealed class DataViewSource(DataViewImages rows, ImageRecipe recipe, ImageAugmentation batchAugmentation, Normalization normalization,
    bool augment, int chunkRows)
    : ITrainingSource
{
    /// <summary>Batches decoded ahead of the one training.</summary>
    public const int Prefetch = 2;

    private double waitSeconds;

    public int Count => rows.Count;
    public int ImageSize => rows.ImageSize;
    public IReadOnlyList<string> ClassNames => rows.ClassNames;
    public double WaitSeconds => waitSeconds;

    private (int X, int Y, int W, int H) ScoringCrop(int w, int h) => ImageRecipes.ScoringCrop(recipe, ImageSize, w, h);

    public IEnumerator<(Tensor Images, Tensor Labels)> Epoch(EpochSpec spec, CancellationToken cancellation)
    {
        // The rows' order is this reader's own (chunked passes over the view); the batch augmentation continues the
        // epoch's generator as the in-memory source does.
        var (seed, epoch) = (spec.Seed, spec.Epoch);
        var random = spec.Draw(Count).Random;
        var shuffle = new Random(ImageBatchLoader.Mix(seed, epoch, -1));
        var stream = rows.Rows(shuffle, chunkRows, (id, w, h) => augment
            ? ImageRecipes.TrainingCrop(recipe, w, h, new Random(ImageBatchLoader.Mix(seed, epoch, DataViewImages.RowSeed(id))))
            : ScoringCrop(w, h), null, cancellation);
        waitSeconds = 0;
        foreach (var (pixels, labels) in Batched(stream, spec.Batches.Select(r => r.End - r.Start), cancellation))
            yield return (batchAugmentation.Apply(pixels, random, normalization), labels);
    }

    public EvaluationResult Evaluate(UnitChainNetwork network, int batchSize, Device device, CancellationToken cancellation)
    {
        var sizes = Enumerable.Range(0, (Count + batchSize - 1) / batchSize).Select(b => Math.Min(batchSize, Count - b * batchSize));
        var stream = rows.Rows(null, 0, (_, w, h) => ScoringCrop(w, h), null, cancellation);
        return Evaluation.Score(network, Batched(stream, sizes, cancellation)
            .Select(b => (normalization.Apply(b.Images.to_type(ScalarType.Float32).DividedByInPlace(255)), b.Labels)), Count, device, cancellation);
    }

    // Groups the rows into uint8 (B, 3, S, S) and int64 (B) batches of the given sizes, the rows read (and decoded) on a
    // background thread at most Prefetch batches ahead (Prefetcher); its errors surface here, on the training thread.
    private IEnumerable<(Tensor Images, Tensor Labels)> Batched(IEnumerable<(byte[] Pixels, long Label)> stream, IEnumerable<int> sizes,
        CancellationToken cancellation)
    {
        var sizeList = sizes.ToList();
        double waitedBefore = waitSeconds;
        int perImage = 3 * ImageSize * ImageSize;
        // Full-size batch buffers go round between the two threads (the one filling, those queued, the one being copied
        // into a tensor): allocated once per epoch, not once per batch.
        int full = sizeList.Count == 0 ? 0 : sizeList.GroupBy(n => n).MaxBy(g => g.Count())!.Key; // the batch size
        using var spare = new BlockingCollection<byte[]>();
        for (int i = 0; i < Prefetch + 2 && i < sizeList.Count; i++) spare.Add(new byte[full * perImage]);
        IEnumerable<(byte[] Pixels, long[] Labels)> Produce(CancellationToken stop)
        {
            using var rowsOfEpoch = stream.GetEnumerator();
            foreach (int size in sizeList)
            {
                var pixels = size == full ? spare.Take(stop) : new byte[size * perImage];
                var labels = new long[size];
                for (int i = 0; i < size; i++)
                {
                    if (!rowsOfEpoch.MoveNext()) throw new InvalidDataException($"The {rows.What} gave fewer rows than the {rows.Count} it held when scanned.");
                    rowsOfEpoch.Current.Pixels.CopyTo(pixels, i * perImage);
                    rows.Buffers.Return(rowsOfEpoch.Current.Pixels);
                    labels[i] = rowsOfEpoch.Current.Label;
                }
                yield return (pixels, labels);
            }
        }
        using var prefetcher = new Prefetcher<(byte[] Pixels, long[] Labels)>(Produce, Prefetch, "Man.ML IDataView reader", cancellation);
        try
        {
            foreach (int size in sizeList)
            {
                if (!prefetcher.TryTake(out var item)) throw new InvalidOperationException("The image reader stopped early.");
                waitSeconds = waitedBefore + prefetcher.WaitSeconds;
                // tensor() copies the array (a test checks it), so the buffer can go round again at once.
                var images = tensor(item.Pixels, new long[] { size, 3, ImageSize, ImageSize }, dtype: ScalarType.Byte);
                if (item.Pixels.Length == full * perImage) spare.Add(item.Pixels);
                yield return (images, tensor(item.Labels, dtype: ScalarType.Int64));
            }
        }
        finally { waitSeconds = waitedBefore + prefetcher.WaitSeconds; }
    }
}
