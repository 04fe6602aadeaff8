// Decoding takes memory in proportion to an image's pixels, not to its file: a 1 MB PNG of 20000×20000 zeros decodes to
// 1.6 GB of pixels, and ML.NET's MLImage and the planar copy add as much again. So every path that decodes an image reads
// its width and height from the header first (SkiaSharp's SKCodec, the decoder under MLImage, reads the header only) and
// refuses an image over a pixel limit before a pixel is decoded. Shared, like ImagePixels, with the ONNX scoring sample.
using System.Globalization;
using Microsoft.ML.Data;
using SkiaSharp;

namespace Man.ML.Data;

/// <summary>Reads an encoded image's size from its header and decodes it only within a pixel limit.</summary>
internal static class ImageHeader
{
    /// <summary>
    /// The default limit: 64 megapixels (8192×8192). Above every camera photograph (ImageNet's largest images are far
    /// smaller), yet one such image decodes to 256 MiB of 32-bit pixels plus a 192 MiB planar copy, and each decoder
    /// thread may hold one.
    /// </summary>
    public const long DefaultMaxPixels = 8192L * 8192;

    /// <summary>What a refusal tells the user to do.</summary>
    public const string RaiseHint = "raise the limit with --max-image-pixels (MaxImagePixels in the library's options) if such images are meant";

    /// <summary>
    /// The width and height in the header of the encoded image at the stream's position (JPEG, PNG, BMP, GIF, WebP, ICO);
    /// the stream is left where it was.
    /// </summary>
    /// <exception cref="InvalidDataException">No image header Man.ML's decoder knows.</exception>
    public static (int Width, int Height) ReadSize(Stream stream)
    {
        long start = stream.Position;
        // The codec owns the wrapper; the wrapper leaves the caller's stream open.
        var wrapper = new SKManagedStream(stream, disposeManagedStream: false);
        var codec = SKCodec.Create(wrapper, out var result);
        try
        {
            if (codec is null)
                throw new InvalidDataException(result == SKCodecResult.IncompleteInput
                    ? "the file is truncated: it ends before the image data."
                    : "it is not a JPEG, PNG, BMP, GIF or WebP image, or its header is damaged.");
            var info = codec.Info;
            return (info.Width, info.Height);
        }
        finally
        {
            if (codec is null) wrapper.Dispose();
            else codec.Dispose();
            stream.Position = start;
        }
    }

    /// <summary>Refuses an image of <paramref name="width"/>×<paramref name="height"/> over <paramref name="maxPixels"/>.</summary>
    /// <exception cref="InvalidDataException">Over the limit; the message gives the size, the limit and how to raise it.</exception>
    public static void Check(int width, int height, long maxPixels)
    {
        long pixels = (long)width * height;
        if (pixels > maxPixels)
            throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                $"the image is {width}x{height} ({pixels:N0} pixels), more than the limit of {maxPixels:N0} pixels; {RaiseHint}."));
    }

    /// <summary>
    /// Decodes the encoded image at the stream's position after checking its header against <paramref name="maxPixels"/>.
    /// </summary>
    /// <exception cref="InvalidDataException">Over the limit, no known header, or the data cannot be decoded (a file that
    /// is only a header, a damaged one).</exception>
    public static MLImage Decode(Stream stream, long maxPixels)
    {
        var (width, height) = ReadSize(stream);
        Check(width, height, maxPixels);
        CheckComplete(stream);
        try { return MLImage.CreateFromStream(stream); }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new InvalidDataException($"the {width}x{height} image cannot be decoded (truncated or damaged).", e);
        }
    }

    // The decoder under MLImage fills what a truncated PNG or JPEG lacks with blank pixels and reports no error, so a cut
    // transfer or a half-written file would be scored as an image. Both formats end with a fixed trailer: PNG with its
    // empty IEND chunk (whose CRC is fixed), JPEG with the EOI marker FF D9 (which cannot occur in entropy-coded data,
    // where FF is followed by 00 or a restart marker); a few bytes of padding after it are allowed. Other formats are
    // left to the decoder.
    private static void CheckComplete(Stream stream)
    {
        if (!stream.CanSeek) return;
        long start = stream.Position, length = stream.Length - start;
        if (length < 16) return; // ReadSize has already refused what has no header
        Span<byte> head = stackalloc byte[4];
        var tail = new byte[(int)Math.Min(length, 64)];
        try
        {
            stream.ReadExactly(head);
            stream.Position = stream.Length - tail.Length;
            stream.ReadExactly(tail);
        }
        finally { stream.Position = start; }
        bool png = head[0] == 0x89 && head[1] == (byte)'P' && head[2] == (byte)'N' && head[3] == (byte)'G';
        bool jpeg = head[0] == 0xFF && head[1] == 0xD8;
        if (png && tail.AsSpan().IndexOf(new byte[] { 0, 0, 0, 0, (byte)'I', (byte)'E', (byte)'N', (byte)'D', 0xAE, 0x42, 0x60, 0x82 }) < 0)
            throw new InvalidDataException("the PNG file is truncated: it ends before its IEND chunk.");
        if (jpeg && tail.AsSpan().IndexOf(new byte[] { 0xFF, 0xD9 }) < 0)
            throw new InvalidDataException("the JPEG file is truncated: it ends before its end-of-image marker.");
    }

    /// <summary>Decodes the image file <paramref name="path"/> (a regular file) within <paramref name="maxPixels"/>.</summary>
    /// <exception cref="InvalidDataException">As <see cref="Decode"/>; the message names the file.</exception>
    public static MLImage DecodeFile(string path, long maxPixels)
    {
        using var stream = InputFiles.OpenRead(path, "Image");
        try { return Decode(stream, maxPixels); }
        catch (InvalidDataException e) { throw new InvalidDataException($"Image '{path}': {e.Message}", e); }
    }

    /// <summary>Checks the header of the image file <paramref name="path"/> against <paramref name="maxPixels"/>.</summary>
    /// <exception cref="InvalidDataException">Over the limit or no known header; the message names the file.</exception>
    public static void CheckFile(string path, long maxPixels)
    {
        using var stream = InputFiles.OpenRead(path, "Image");
        try
        {
            var (width, height) = ReadSize(stream);
            Check(width, height, maxPixels);
        }
        catch (InvalidDataException e) { throw new InvalidDataException($"Image '{path}': {e.Message}", e); }
    }
}
