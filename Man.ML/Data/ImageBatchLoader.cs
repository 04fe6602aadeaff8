// ImageNet-style input pipelines over image files (docs/METHOD.md §4): random-resized crop (scale 0.08–1, ratio 3/4–4/3,
// torchvision's ten tries then a centre crop) + horizontal flip for training; resize the shorter side to 256 and
// centre-crop 224 for evaluation; then per-channel normalisation. Crops and resizes are ImagePixels', the one
// implementation training, the transformer and the ONNX scorer share. Decoding runs on background threads a few
// batches ahead (Prefetcher), so the network waits on JPEG decoding only when the cores cannot keep up. Every image's random draws come
// from (seed, epoch, position), so results do not depend on thread timing.
using Microsoft.ML.Data;

namespace Man.ML.Data;

/// <summary>Crop sizes and normalisation of the ImageNet recipe.</summary>
/// <param name="CropSize">Side of the network input (224).</param>
/// <param name="ResizeSize">Evaluation: the shorter side is resized to this before the centre crop (256).</param>
/// <param name="Normalization">Per-channel normalisation (ImageNet's mean and std).</param>
internal sealed record ImageNetTransform(int CropSize, int ResizeSize, Normalization Normalization)
{
    /// <summary>Most pixels an image may have; a larger one is refused from its header, before decoding (ImageHeader).</summary>
    public long MaxPixels { get; init; } = ImageHeader.DefaultMaxPixels;

    /// <summary>ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).</summary>
    public static Normalization ImageNetNormalization { get; } = new(new[] { 0.485f, 0.456f, 0.406f }, new[] { 0.229f, 0.224f, 0.225f });

    /// <summary>The reference recipe: crop 224, evaluation resize 256, ImageNet normalisation.</summary>
    public static ImageNetTransform Standard { get; } = new(224, 256, ImageNetNormalization);

    /// <summary>The recipe at another crop size, with the evaluation resize scaled as 256/224.</summary>
    public static ImageNetTransform ForCrop(int cropSize) => new(cropSize, ImagePixels.ResizeFor(cropSize), ImageNetNormalization);

    /// <summary>
    /// torchvision's RandomResizedCrop parameters for an image of <paramref name="width"/>×<paramref name="height"/>: ten
    /// tries of a random area (8–100 %) and log-uniform aspect ratio (3/4–4/3) that fits, else the centre crop with the
    /// ratio clamped to that range. Returns (x, y, w, h) in source pixels.
    /// </summary>
    public static (int X, int Y, int W, int H) RandomResizedCrop(int width, int height, Random random)
    {
        double area = (double)width * height;
        double logLow = Math.Log(3.0 / 4.0), logHigh = Math.Log(4.0 / 3.0);
        for (int attempt = 0; attempt < 10; attempt++)
        {
            double target = area * (0.08 + random.NextDouble() * (1 - 0.08));
            double ratio = Math.Exp(logLow + random.NextDouble() * (logHigh - logLow));
            int w = (int)Math.Round(Math.Sqrt(target * ratio));
            int h = (int)Math.Round(Math.Sqrt(target / ratio));
            if (w > 0 && h > 0 && w <= width && h <= height)
                return (random.Next(width - w + 1), random.Next(height - h + 1), w, h);
        }
        double inRatio = (double)width / height;
        int cw, ch;
        if (inRatio < 3.0 / 4.0) { cw = width; ch = (int)Math.Round(cw / (3.0 / 4.0)); }
        else if (inRatio > 4.0 / 3.0) { ch = height; cw = (int)Math.Round(ch * (4.0 / 3.0)); }
        else { cw = width; ch = height; }
        return ((width - cw) / 2, (height - ch) / 2, cw, ch);
    }

    /// <summary>Evaluation crop: the centre square that becomes <see cref="CropSize"/> once the shorter side is <see cref="ResizeSize"/>.</summary>
    public (int X, int Y, int W, int H) CentreCrop(int width, int height) => ImagePixels.CentreCrop(CropSize, ResizeSize, width, height);

    /// <summary>
    /// Decodes <paramref name="path"/>, crops it (randomly with flip when <paramref name="random"/> is given, else the
    /// evaluation crop) and resizes it to <see cref="CropSize"/> as the transformer and the ONNX scorer do
    /// (<see cref="ImagePixels"/>: the same decoder, crop and antialiased bilinear), then writes normalised floats,
    /// channel-major, into <paramref name="destination"/> (3·S·S).
    /// </summary>
    /// <exception cref="InvalidDataException">The file cannot be decoded as an image, or has more than <see cref="MaxPixels"/>.</exception>
    public void Load(string path, Random? random, Span<float> destination)
    {
        int s = CropSize, plane = s * s;
        var pixels = new byte[3 * plane];
        using (var image = ImageHeader.DecodeFile(path, MaxPixels))
        {
            try { ImagePixels.ToInput(image, (w, h) => random is null ? CentreCrop(w, h) : RandomResizedCrop(w, h, random), s, pixels); }
            catch (InvalidDataException e) { throw new InvalidDataException($"Image '{path}': {e.Message}", e); }
        }
        // Drawn after the crop, as before: a run's augmentation stays what its seed gave.
        bool flip = random is not null && random.Next(2) == 1;
        var mean = Normalization.Mean;
        var std = Normalization.Std;
        for (int c = 0; c < 3; c++)
            for (int row = 0; row < s; row++)
            {
                int at = c * plane + row * s;
                for (int col = 0; col < s; col++)
                    destination[at + col] = (pixels[at + (flip ? s - 1 - col : col)] / 255f - mean[c]) / std[c];
            }
    }
}

/// <summary>Mini-batches of decoded, transformed images from an <see cref="ImageFileSet"/>, decoded ahead on background threads.</summary>
internal sealed class ImageBatchLoader
{
    private readonly ImageFileSet files;

    /// <summary>The transform.</summary>
    public ImageNetTransform Transform { get; }

    /// <summary>Decoding threads.</summary>
    public int Workers { get; }

    /// <summary>Batches decoded ahead of the one being used.</summary>
    public int Prefetch { get; }

    /// <summary>Seconds the consumer spent waiting for a batch in the last enumeration.</summary>
    public double WaitSeconds { get; private set; }

    /// <summary>Creates a loader.</summary>
    /// <param name="files">The images.</param>
    /// <param name="transform">Crop and normalisation.</param>
    /// <param name="workers">Decoding threads; 0 means half the cores (at least one).</param>
    /// <param name="prefetch">Batches decoded ahead.</param>
    public ImageBatchLoader(ImageFileSet files, ImageNetTransform transform, int workers = 0, int prefetch = 2)
    {
        if (workers < 0) throw new ArgumentOutOfRangeException(nameof(workers), workers, "Workers must be 0 (automatic) or more.");
        if (prefetch < 1) throw new ArgumentOutOfRangeException(nameof(prefetch), prefetch, "At least one batch must be decoded ahead.");
        this.files = files;
        Transform = transform;
        Workers = workers == 0 ? Math.Max(1, Environment.ProcessorCount / 2) : workers;
        Prefetch = prefetch;
    }

    /// <summary>
    /// The batches of images <paramref name="order"/>[start..end) for each range, as (B, 3, S, S) float32 and (B) int64
    /// CPU tensors. Training batches (<paramref name="train"/>) are randomly cropped and flipped with draws from
    /// (<paramref name="seed"/>, <paramref name="epoch"/>, position); evaluation batches are centre-cropped.
    /// </summary>
    public IEnumerable<(Tensor Images, Tensor Labels)> Batches(long[] order, IReadOnlyList<(int Start, int End)> ranges, bool train,
        int seed, int epoch, CancellationToken cancellation = default)
    {
        WaitSeconds = 0;
        int side = Transform.CropSize, perImage = 3 * side * side;
        IEnumerable<(float[] Pixels, long[] Labels)> Produce(CancellationToken stop)
        {
            foreach (var (start, end) in ranges)
            {
                var pixels = new float[(end - start) * perImage];
                var labels = new long[end - start];
                Parallel.For(start, end, new ParallelOptions { MaxDegreeOfParallelism = Workers, CancellationToken = stop }, position =>
                {
                    int image = (int)order[position];
                    var random = train ? new Random(Mix(seed, epoch, position)) : null;
                    Transform.Load(files.Paths[image], random, pixels.AsSpan((position - start) * perImage, perImage));
                    labels[position - start] = files.Labels[image];
                });
                yield return (pixels, labels);
            }
        }
        using var prefetcher = new Prefetcher<(float[] Pixels, long[] Labels)>(Produce, Prefetch, "Man.ML image decoder", cancellation);
        try
        {
            for (int b = 0; b < ranges.Count; b++)
            {
                if (!prefetcher.TryTake(out var item)) throw new InvalidOperationException("The image decoder stopped early.");
                WaitSeconds = prefetcher.WaitSeconds;
                int count = item.Labels.Length;
                yield return (tensor(item.Pixels, new long[] { count, 3, side, side }), tensor(item.Labels, dtype: ScalarType.Int64));
            }
        }
        finally { WaitSeconds = prefetcher.WaitSeconds; }
    }

    // A 32-bit seed from (seed, epoch, position) by SplitMix64 mixing: stable across processes and runs.
    internal static int Mix(int seed, int epoch, int position)
    {
        ulong z = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL ^ (ulong)epoch * 0xBF58476D1CE4E5B9UL ^ (ulong)position * 0x94D049BB133111EBUL);
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return (int)((z ^ (z >> 31)) & 0x7FFFFFFF);
    }
}
