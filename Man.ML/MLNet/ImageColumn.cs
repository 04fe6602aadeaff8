// Reading an image column of an IDataView into the network's input format (3 x S x S, uint8, planar RGB): an MLImage
// (from LoadImages), encoded image bytes (from LoadRawImageBytes), or a pixel vector from ExtractPixels with its default
// settings (planar RGB, values 0-255, known size 3·S·S). An image over the pixel limit is refused before it is converted:
// encoded bytes from the header, before decoding (ImageHeader); an MLImage from its size, since LoadImages has already
// decoded it with ML.NET's own decoder, which Man.ML cannot bound (the command line checks the files' headers first).
// Each image is cropped to the rectangle the data recipe asks for (the whole image by default) and resized bilinearly
// (antialiased, ImagePixels) to S×S. Grayscale and palette images arrive as 32-bit MLImages (LoadImages converts them)
// and become three equal planes; an alpha channel is dropped. Every failure names the column, and the row where there
// is one (and the file, where a text column of the row holds its path).
using Microsoft.ML;
using Microsoft.ML.Data;
using Man.ML.Data;
using Microsoft.ML.Transforms.Image;

namespace Man.ML.MLNet;

/// <summary>How images arrive in a column.</summary>
internal enum ImageColumnKind
{
    /// <summary>MLImage values (LoadImages).</summary>
    Image,

    /// <summary>Encoded image file bytes (LoadRawImageBytes).</summary>
    EncodedBytes,

    /// <summary>Float pixel vectors of length 3·S·S (ExtractPixels defaults).</summary>
    Pixels,
}

/// <summary>Reads one image column row by row into uint8 RGB planes of a fixed size.</summary>
internal sealed class ImageColumn
{
    public string Name { get; }
    public ImageColumnKind Kind { get; }
    public int ImageSize { get; }
    public int PixelCount => 3 * ImageSize * ImageSize;

    /// <summary>Most pixels (width·height) an image may have (<see cref="ImageHeader"/>).</summary>
    public long MaxPixels { get; }

    private ImageColumn(string name, ImageColumnKind kind, int imageSize, long maxPixels)
    {
        Name = name;
        Kind = kind;
        ImageSize = imageSize;
        MaxPixels = maxPixels;
    }

    /// <summary>Checks the column exists and has a type Man.ML can read.</summary>
    /// <exception cref="ArgumentOutOfRangeException">No such column.</exception>
    /// <exception cref="ArgumentException">The column's type is not an image, bytes or a pixel vector of length 3·S·S.</exception>
    public static ImageColumn Resolve(DataViewSchema schema, string name, int imageSize, long maxPixels = ImageHeader.DefaultMaxPixels)
    {
        var column = schema.GetColumnOrNull(name)
            ?? throw new ArgumentOutOfRangeException(nameof(name),
                $"Image column '{name}' was not found in the data " +
                $"(columns: {string.Join(", ", schema.Select(c => c.Name))}).");
        var type = column.Type;
        if (type is ImageDataViewType) return new ImageColumn(name, ImageColumnKind.Image, imageSize, maxPixels);
        if (type is VectorDataViewType { ItemType: var item } vector)
        {
            if (item == NumberDataViewType.Byte) return new ImageColumn(name, ImageColumnKind.EncodedBytes, imageSize, maxPixels);
            if (item == NumberDataViewType.Single)
            {
                int expected = 3 * imageSize * imageSize;
                if (vector.Size != expected)
                    throw new ArgumentException(
                        $"Image column '{name}' is a pixel vector of {(vector.Size == 0 ? "unknown" : vector.Size.ToString())} values; " +
                        $"expected exactly {expected} (3 x {imageSize} x {imageSize}, planar RGB from ExtractPixels) for ImageSize {imageSize}.");
                return new ImageColumn(name, ImageColumnKind.Pixels, imageSize, maxPixels);
            }
        }
        throw new ArgumentException(
            $"Image column '{name}' has type {type}; expected an image (LoadImages), " +
            $"encoded image bytes (LoadRawImageBytes) or a Single pixel vector (ExtractPixels).");
    }

    /// <summary>A reader for the current row of <paramref name="row"/>, filling a 3·S·S byte buffer. An error names the
    /// column and the row, and where <paramref name="describeRow"/> is given what it says of the row (for example the
    /// file the image was loaded from). <paramref name="crop"/> gives, for an image of (width, height), the source
    /// rectangle (x, y, w, h) that is resized to S×S; null takes the whole image.</summary>
    public Action<long, byte[]> CreateReader(DataViewRow row, Func<string>? describeRow = null, Func<int, int, (int X, int Y, int W, int H)>? crop = null)
    {
        this.describeRow = describeRow;
        this.crop = crop;
        var column = row.Schema[Name];
        switch (Kind)
        {
            case ImageColumnKind.Image:
            {
                var getter = row.GetGetter<MLImage>(column);
                return (position, target) =>
                {
                    MLImage image = null!;
                    try { getter(ref image); }
                    catch (Exception e) when (e is not OperationCanceledException)
                    {
                        throw RowError(position, $"the image could not be loaded or decoded: {e.Message}", e);
                    }
                    if (image is null) throw RowError(position, "the image is missing.");
                    FromImage(image, target, position);
                };
            }
            case ImageColumnKind.EncodedBytes:
            {
                var getter = row.GetGetter<VBuffer<byte>>(column);
                var buffer = default(VBuffer<byte>);
                return (position, target) =>
                {
                    getter(ref buffer);
                    var bytes = buffer.DenseValues().ToArray();
                    if (bytes.Length == 0) throw RowError(position, "the image bytes are empty.");
                    MLImage image;
                    try { image = ImageHeader.Decode(new MemoryStream(bytes, writable: false), MaxPixels); }
                    catch (InvalidDataException e) { throw RowError(position, e.Message, e); }
                    using (image) FromImage(image, target, position);
                };
            }
            default:
            {
                var getter = row.GetGetter<VBuffer<float>>(column);
                var buffer = default(VBuffer<float>);
                return (position, target) =>
                {
                    getter(ref buffer);
                    if (buffer.Length != PixelCount)
                        throw RowError(position, $"the pixel vector has {buffer.Length} values, expected {PixelCount}.");
                    var rect = crop?.Invoke(ImageSize, ImageSize) ?? (0, 0, ImageSize, ImageSize);
                    bool whole = rect == (0, 0, ImageSize, ImageSize);
                    var planes = whole ? target : new byte[PixelCount];
                    int i = 0;
                    foreach (var v in buffer.DenseValues())
                    {
                        if (float.IsNaN(v)) throw RowError(position, $"pixel {i} is NaN.");
                        planes[i++] = (byte)Math.Clamp(MathF.Round(v), 0, 255);
                    }
                    if (!whole) ImagePixels.CropResize(planes, ImageSize, ImageSize, rect, ImageSize, target);
                };
            }
        }
    }

    private Func<string>? describeRow;
    private Func<int, int, (int X, int Y, int W, int H)>? crop;

    private InvalidDataException RowError(long position, string message, Exception? inner = null)
    {
        string where = "";
        try { if (describeRow?.Invoke() is { Length: > 0 } d) where = $" ({d})"; }
        catch (Exception e) when (e is not OperationCanceledException) { } // the description is a courtesy: the error is the image's
        return new($"Image column '{Name}', row {position}{where}: {message}", inner);
    }

    /// <summary>
    /// A description of the current row for error messages: the text columns of <paramref name="schema"/> whose value is
    /// the path of an existing file (where a pipeline's LoadImages or LoadRawImageBytes read the image from), as
    /// "Column = 'path'". The columns are read only when an error is described.
    /// </summary>
    public static (IEnumerable<DataViewSchema.Column> Columns, Func<DataViewRow, Func<string>> Describe) PathColumns(DataViewSchema schema)
    {
        var text = schema.Where(c => !c.IsHidden && c.Type is TextDataViewType).ToList();
        return (text, row =>
        {
            // Made at the first error: a row whose path columns are not active describes nothing rather than failing.
            List<(string Name, ValueGetter<ReadOnlyMemory<char>> Getter)>? getters = null;
            return () =>
            {
                getters ??= text.Where(row.IsColumnActive).Select(c => (c.Name, row.GetGetter<ReadOnlyMemory<char>>(c))).ToList();
                var found = new List<string>();
                foreach (var (name, getter) in getters)
                {
                    var value = default(ReadOnlyMemory<char>);
                    getter(ref value);
                    var path = value.ToString();
                    if (path.Length > 0 && path.IndexOfAny(Path.GetInvalidPathChars()) < 0 && File.Exists(path)) found.Add($"{name} = '{path}'");
                }
                return string.Join(", ", found);
            };
        });
    }

    // MLImage pixels are 32-bit BGRA or RGBA, row-major; the network wants planar RGB at S x S (ImagePixels, the one
    // implementation the ONNX scoring sample shares).
    private void FromImage(MLImage image, byte[] target, long position)
    {
        try
        {
            ImageHeader.Check(image.Width, image.Height, MaxPixels);
            ImagePixels.ToInput(image, crop, ImageSize, target);
        }
        catch (InvalidDataException e) { throw RowError(position, e.Message); }
    }
}
