// How an image becomes the network's S×S planar RGB bytes, in plain managed code: the crop of the data recipe, then an
// antialiased bilinear resize (PyTorch's interpolate(mode="bilinear", antialias=True, align_corners=False): a triangle
// filter widened by the scale when shrinking, applied along the width and then the height, rounded half to even).
// The file depends on nothing but .NET and ML.NET's MLImage, so that a scoring program without TorchSharp (the ONNX
// sample, Man.ML.OnnxScoring) compiles this very file and feeds an exported model the same pixels as Man.ML's
// transformer, bit for bit.
using Microsoft.ML.Data;

namespace Man.ML.Data;

/// <summary>Crops and resizes images to planar RGB bytes as Man.ML's trainer and transformer do.</summary>
internal static class ImagePixels
{
    /// <summary>
    /// The scoring crop of the ImageNet recipe for an image of <paramref name="width"/>×<paramref name="height"/>: the
    /// centre square that becomes <paramref name="cropSize"/> once the shorter side is resized to
    /// <paramref name="resizeSize"/>, as (x, y, w, h).
    /// </summary>
    public static (int X, int Y, int W, int H) CentreCrop(int cropSize, int resizeSize, int width, int height)
    {
        double scale = (double)resizeSize / Math.Min(width, height);
        int side = Math.Min(Math.Min(width, height), (int)Math.Round(cropSize / scale));
        return ((width - side) / 2, (height - side) / 2, side, side);
    }

    /// <summary>The evaluation resize of the ImageNet recipe at crop <paramref name="cropSize"/> (256 at 224).</summary>
    public static int ResizeFor(int cropSize) => (int)Math.Round(cropSize * 256.0 / 224.0);

    /// <summary>
    /// Planar RGB bytes (3·h·w) of an MLImage (32-bit BGRA or RGBA rows; alpha dropped).
    /// </summary>
    /// <exception cref="InvalidDataException">The image is empty or not 24/32-bit.</exception>
    public static byte[] Planar(MLImage image)
    {
        int w = image.Width, h = image.Height;
        if (w <= 0 || h <= 0) throw new InvalidDataException("the image is empty.");
        int bytesPerPixel = image.BitsPerPixel / 8;
        if (bytesPerPixel < 3) throw new InvalidDataException($"unsupported pixel format {image.PixelFormat}.");
        bool bgr = image.PixelFormat == MLPixelFormat.Bgra32;
        var pixels = image.Pixels;
        int plane = w * h;
        var planar = new byte[3 * plane];
        for (int p = 0; p < plane; p++)
        {
            int at = p * bytesPerPixel;
            planar[p] = pixels[at + (bgr ? 2 : 0)];
            planar[plane + p] = pixels[at + 1];
            planar[2 * plane + p] = pixels[at + (bgr ? 0 : 2)];
        }
        return planar;
    }

    /// <summary>
    /// The network input of <paramref name="image"/>: the rectangle <paramref name="crop"/> gives for its (width, height)
    /// (null: the whole image), resized to <paramref name="size"/>×<paramref name="size"/>, as planar RGB bytes in
    /// <paramref name="target"/> (3·size·size).
    /// </summary>
    /// <exception cref="InvalidDataException">The image is empty or not 24/32-bit.</exception>
    public static void ToInput(MLImage image, Func<int, int, (int X, int Y, int W, int H)>? crop, int size, Span<byte> target)
    {
        var planar = Planar(image);
        int w = image.Width, h = image.Height;
        var rect = crop?.Invoke(w, h) ?? (0, 0, w, h);
        if (w == size && h == size && rect == (0, 0, w, h)) planar.CopyTo(target);
        else CropResize(planar, w, h, rect, size, target);
    }

    /// <summary>
    /// Resizes the rectangle <paramref name="rect"/> of a planar RGB image (<paramref name="width"/>×<paramref name="height"/>)
    /// to <paramref name="size"/>×<paramref name="size"/> into <paramref name="target"/> (3·size·size bytes).
    /// </summary>
    public static void CropResize(ReadOnlySpan<byte> planar, int width, int height, (int X, int Y, int W, int H) rect, int size, Span<byte> target)
    {
        var (x0, y0, cw, ch) = rect;
        if (cw < 1 || ch < 1 || x0 < 0 || y0 < 0 || x0 + cw > width || y0 + ch > height)
            throw new ArgumentOutOfRangeException(nameof(rect), rect, $"The crop does not lie inside the {width}x{height} image.");
        var (columnStart, columnCount, columnWeights, columnTaps) = Weights(cw, size);
        var (rowStart, rowCount, rowWeights, rowTaps) = Weights(ch, size);
        var horizontal = new float[ch * size];
        for (int c = 0; c < 3; c++)
        {
            var source = planar.Slice(c * width * height, width * height);
            // Along the width first (the contiguous dimension), as PyTorch's separable kernel does; a dimension that
            // keeps its size is copied, not filtered.
            for (int r = 0; r < ch; r++)
            {
                int rowAt = (y0 + r) * width + x0;
                for (int o = 0; o < size; o++)
                {
                    if (cw == size) { horizontal[r * size + o] = source[rowAt + o]; continue; }
                    float sum = 0;
                    int start = columnStart[o];
                    for (int j = 0; j < columnCount[o]; j++) sum += columnWeights[o * columnTaps + j] * source[rowAt + start + j];
                    horizontal[r * size + o] = sum;
                }
            }
            var output = target.Slice(c * size * size, size * size);
            for (int o = 0; o < size; o++)
                for (int col = 0; col < size; col++)
                {
                    float value;
                    if (ch == size) value = horizontal[o * size + col];
                    else
                    {
                        value = 0;
                        int start = rowStart[o];
                        for (int j = 0; j < rowCount[o]; j++) value += rowWeights[o * rowTaps + j] * horizontal[(start + j) * size + col];
                    }
                    output[o * size + col] = (byte)Math.Clamp(MathF.Round(value), 0, 255);
                }
        }
    }

    // PyTorch's antialiased bilinear weights (float32 arithmetic, as its CPU kernel computes them for float images):
    // centre = scale·(i + ½); support = scale when shrinking, else 1; taps from ⌊centre − support + ½⌋ to
    // ⌊centre + support + ½⌋ (clipped), each weighted by the triangle filter at (j + xmin − centre + ½)·min(1, 1/scale),
    // normalised to sum to one.
    private static (int[] Start, int[] Count, float[] Weights, int Taps) Weights(int input, int output)
    {
        float scale = (float)input / output;
        float support = scale >= 1 ? scale : 1f;
        float invScale = scale >= 1 ? 1f / scale : 1f;
        int taps = (int)Math.Ceiling(support) * 2 + 1;
        var start = new int[output];
        var count = new int[output];
        var weights = new float[output * taps];
        for (int i = 0; i < output; i++)
        {
            float centre = (float)(scale * (i + 0.5));
            int xmin = Math.Max((int)(centre - support + 0.5), 0);
            int xsize = Math.Min((int)(centre + support + 0.5), input) - xmin;
            float total = 0;
            for (int j = 0; j < xsize; j++)
            {
                float w = Triangle((float)((j + xmin - centre + 0.5) * invScale));
                weights[i * taps + j] = w;
                total += w;
            }
            if (total != 0)
                for (int j = 0; j < xsize; j++) weights[i * taps + j] /= total;
            start[i] = xmin;
            count[i] = xsize;
        }
        return (start, count, weights, taps);
    }

    private static float Triangle(float x)
    {
        if (x < 0) x = -x;
        return x < 1 ? 1 - x : 0;
    }
}
