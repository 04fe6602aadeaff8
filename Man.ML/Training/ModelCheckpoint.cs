// A trained backbone on disk: a small header (magic, format version, JSON description: architecture, classes, image
// size, class names, normalisation and the data recipe) followed by the weights in TorchSharp's format, then (from
// format version 2) a SHA-256 of everything before it, checked before any of it is used (CheckpointFormat). The recipe was
// added to the header later; a header without it still loads, and CheckpointInfo.Recipe then infers it from the
// architecture, as every scorer did before. Written to a temporary file and renamed into place, so a crash never leaves a torn file.
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Man.ML.Data;
using Man.ML.Models;

namespace Man.ML.Training;

/// <summary>What a checkpoint says about the network it holds.</summary>
public sealed record CheckpointInfo
{
    /// <summary>Architecture name (resnet32, ...).</summary>
    public string Architecture { get; init; } = "";

    /// <summary>Number of classes.</summary>
    public int Classes { get; init; }

    /// <summary>Side of the input images.</summary>
    public int ImageSize { get; init; }

    /// <summary>Class names, index for index.</summary>
    public string[] ClassNames { get; init; } = Array.Empty<string>();

    /// <summary>Normalisation mean the network was trained with.</summary>
    public float[] NormalizationMean { get; init; } = Array.Empty<float>();

    /// <summary>Normalisation standard deviation the network was trained with.</summary>
    public float[] NormalizationStd { get; init; } = Array.Empty<float>();

    /// <summary>How it was trained (rule, K, MAN), for the record.</summary>
    public string TrainedWith { get; init; } = "";

    /// <summary>
    /// The data recipe the network was trained with, which scoring must crop and resize with (CIFAR's or ImageNet's);
    /// <see cref="Data.ImageRecipe.Automatic"/> in a checkpoint written before the recipe was recorded (see
    /// <see cref="Recipe"/>).
    /// </summary>
    [JsonConverter(typeof(RecipeJsonConverter))]
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)] // unrecorded stays absent, as in older files
    public ImageRecipe ImageRecipe { get; init; }

    /// <summary>The recipe to score with: <see cref="ImageRecipe"/>, or for a checkpoint that does not record one the
    /// recipe its architecture implies (CIFAR's for the CIFAR ResNets, ImageNet's otherwise; <see cref="RecipeInferred"/>).</summary>
    [JsonIgnore]
    public ImageRecipe Recipe => ImageRecipes.Resolve(ImageRecipe, Architecture);

    /// <summary>Whether <see cref="Recipe"/> was inferred from the architecture: the checkpoint predates the recorded recipe.</summary>
    [JsonIgnore]
    public bool RecipeInferred => ImageRecipe == ImageRecipe.Automatic;

    /// <summary>
    /// Whether the file this was read from carried a checksum and it matched; false for a checkpoint written before
    /// Man.ML recorded checksums (format version 1), whose contents could not be verified.
    /// </summary>
    [JsonIgnore]
    public bool Verified { get; init; }

    /// <summary>The normalisation the network was trained with (<see cref="NormalizationMean"/>, <see cref="NormalizationStd"/>).</summary>
    /// <exception cref="InvalidDataException">The checkpoint does not record a 3-channel normalisation.</exception>
    [JsonIgnore]
    public Normalization Normalization => NormalizationMean.Length == 3 && NormalizationStd.Length == 3
        ? new Normalization(NormalizationMean, NormalizationStd)
        : throw new InvalidDataException(
            $"The checkpoint of {Architecture} records no 3-channel normalisation " +
            $"(mean of {NormalizationMean.Length}, std of {NormalizationStd.Length} values).");
}

/// <summary>Writes a recipe by its command-line name ("cifar", "imagenet"), as the ML.NET model and the ONNX metadata do.</summary>
internal sealed class RecipeJsonConverter : JsonConverter<ImageRecipe>
{
    public override ImageRecipe Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        Choices.TryParse<ImageRecipe>(reader.GetString(), out var recipe) ? recipe
            : throw new JsonException($"image_recipe '{reader.GetString()}' is not one of: {string.Join(", ", Choices.Names<ImageRecipe>())}.");

    public override void Write(Utf8JsonWriter writer, ImageRecipe value, JsonSerializerOptions options) => writer.WriteStringValue(Choices.Name(value));
}

/// <summary>Saves and loads trained backbones, to files or any stream.</summary>
public static class ModelCheckpoint
{
    /// <summary>Current format version (2: the file ends with a SHA-256 of its contents).</summary>
    public const int FormatVersion = 2;

    private const int FirstChecksummedVersion = 2;

    // Bounds of what a checkpoint may describe, so that a damaged or hostile header is refused before a network is built:
    // ImageNet-21k has 21,841 classes, and a 100,000-class head on a 2,048-wide feature is already 800 MB of weights;
    // no network here is trained above 512 pixels, and 4,096 keeps one image's activations within memory; the deepest
    // CIFAR ResNet of He et al. (2016) is resnet1202.
    internal const int MaxClasses = 100_000, MaxImageSize = 4096, MaxCifarDepth = 1202;

    internal static readonly byte[] Magic = "MANML-CKPT\n"u8.ToArray();
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Writes <paramref name="network"/> and <paramref name="info"/> to <paramref name="path"/> atomically.</summary>
    public static void Save(string path, UnitChainNetwork network, CheckpointInfo info) =>
        AtomicFile.Write(path, stream => Save(stream, network, info));

    /// <summary>Writes <paramref name="network"/> and <paramref name="info"/> to <paramref name="stream"/> (left open).</summary>
    public static void Save(Stream stream, UnitChainNetwork network, CheckpointInfo info) =>
        CheckpointFormat.Write(stream, Magic, FormatVersion, JsonSerializer.Serialize(info, Json), writer => network.save(writer));

    /// <summary>Loads a checkpoint written by <see cref="Save(string, UnitChainNetwork, CheckpointInfo)"/>.</summary>
    /// <exception cref="InvalidDataException">Not a Man.ML checkpoint, a newer format, truncated, damaged (its checksum does
    /// not match), or describing a network Man.ML cannot build.</exception>
    public static (UnitChainNetwork Network, CheckpointInfo Info) Load(string path)
    {
        using var stream = InputFiles.OpenRead(path, "Checkpoint");
        return Load(stream, $"Checkpoint '{path}'");
    }

    /// <summary>Loads a checkpoint from <paramref name="stream"/> (left open); <paramref name="name"/> names it in messages.</summary>
    /// <exception cref="InvalidDataException">Not a Man.ML checkpoint, a newer format, truncated, damaged (its checksum does
    /// not match), or describing a network Man.ML cannot build.</exception>
    public static (UnitChainNetwork Network, CheckpointInfo Info) Load(Stream stream, string name = "The checkpoint")
    {
        using var frame = CheckpointFormat.Open(stream, Magic, FormatVersion, FirstChecksummedVersion, name, "checkpoint");
        CheckpointInfo info;
        try { info = JsonSerializer.Deserialize<CheckpointInfo>(frame.Json, Json) ?? throw new InvalidDataException($"{name} has an empty header."); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException or FormatException or NotSupportedException)
        {
            throw new InvalidDataException($"{name} has a damaged header: {CheckpointFormat.Reason(e)}", e);
        }
        info = Validate(info, name) with { Verified = frame.Verified };
        UnitChainNetwork network;
        try { network = Architectures.Create(info.Architecture, info.Classes, info.ImageSize); }
        catch (ArgumentException e) { throw new InvalidDataException($"{name} describes a network Man.ML cannot build: {e.Message}", e); }
        try
        {
            network.load(frame.Reader);
            return (network, info);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            network.Dispose();
            throw new InvalidDataException($"{name} is truncated or damaged: {CheckpointFormat.Reason(e)}", e);
        }
    }

    // Every field a reader goes on to use, checked against what the networks and the scorers accept.
    private static CheckpointInfo Validate(CheckpointInfo info, string name)
    {
        string Fail(string field, string why) => throw new InvalidDataException($"{name} has a damaged header: {field} {why}.");
        if (info.Architecture is null) Fail("architecture", "is missing");
        string canonical;
        try { canonical = Architectures.Canonical(info.Architecture!); }
        catch (ArgumentException) { canonical = Fail("architecture", $"'{info.Architecture}' is not a network Man.ML knows"); }
        var family = Architectures.FamilyOf(canonical);
        if (family == NetworkFamily.Cifar && int.Parse(canonical.AsSpan(6)) > MaxCifarDepth)
            Fail("architecture", $"'{canonical}' is deeper than the resnet{MaxCifarDepth} Man.ML reads");
        if (info.Classes < 1 || info.Classes > MaxClasses) Fail("classes", $"is {info.Classes}; Man.ML reads 1 to {MaxClasses:N0}");
        // The smallest input each family's strides take (CifarResNet and the ImageNet networks check the same bounds).
        int minSize = family == NetworkFamily.ImageNet ? 32 : 8;
        if (info.ImageSize < minSize || info.ImageSize > MaxImageSize)
            Fail("image_size", $"is {info.ImageSize}; {canonical} takes {minSize} to {MaxImageSize} pixels");
        if (info.ClassNames is null || info.ClassNames.Any(n => n is null)) Fail("class_names", "holds a null");
        if (info.ClassNames!.Length != 0 && info.ClassNames.Length != info.Classes)
            Fail("class_names", $"has {info.ClassNames.Length} names for {info.Classes} classes");
        if (info.NormalizationMean is null || info.NormalizationStd is null) Fail("normalization", "is null");
        bool absent = info.NormalizationMean!.Length == 0 && info.NormalizationStd!.Length == 0; // checkpoints that predate it
        if (!absent && (info.NormalizationMean.Length != 3 || info.NormalizationStd!.Length != 3))
            Fail("normalization", $"has {info.NormalizationMean.Length} means and {info.NormalizationStd!.Length} deviations, not 3 and 3");
        if (!info.NormalizationMean.All(float.IsFinite) || !info.NormalizationStd!.All(s => float.IsFinite(s) && s > 0))
            Fail("normalization", "holds a value that is not finite or a deviation that is not positive");
        if (info.TrainedWith is null) Fail("trained_with", "is null");
        return info;
    }
}

/// <summary>
/// The frame every Man.ML checkpoint shares: magic bytes, a format version and a JSON header, then the payload, then
/// (from the versions that record one) a trailer: <see cref="TrailerMagic"/> and the SHA-256 of every byte before it.
/// One reader for all of them, so every kind reports a foreign, newer, truncated or damaged file the same way, and the
/// checksum is verified before any value of the file is used. A trailer is verified whatever the version says, and a
/// version that records one refuses a file without it, so neither a changed version nor a cut trailer skips the check.
/// </summary>
internal static class CheckpointFormat
{
    public static readonly byte[] TrailerMagic = "MANMLSUM"u8.ToArray();
    public const int TrailerLength = 8 + 32;

    // A checkpoint read from a stream that cannot seek (a zip entry) is copied into memory to be verified before it is
    // parsed: one MemoryStream holds at most Array.MaxLength bytes, and the largest network here (resnext101_32x8d,
    // 88.8 M parameters) is 355 MB, a run checkpoint of it about three times that.
    public static long MaxInMemoryBytes => Array.MaxLength;

    /// <summary>Writes the frame: header, <paramref name="writePayload"/>'s bytes, and the trailer, hashing as it writes.</summary>
    public static void Write(Stream stream, byte[] magic, int version, string json, Action<BinaryWriter> writePayload)
    {
        using var hashing = new HashingWriteStream(stream);
        using (var writer = new BinaryWriter(hashing, Encoding.UTF8, leaveOpen: true))
        {
            WriteHeader(writer, magic, version, json);
            writePayload(writer);
            writer.Flush();
        }
        stream.Write(TrailerMagic);
        stream.Write(hashing.Hash());
    }

    /// <summary>The header alone, as format versions before the trailer wrote it (kept for tests that write old files).</summary>
    public static void WriteHeader(BinaryWriter writer, byte[] magic, int version, string json)
    {
        writer.Write(magic);
        writer.Write(version);
        writer.Write(json);
    }

    /// <summary>An opened frame: the version, the JSON header, whether a checksum verified it, and a reader at the payload.</summary>
    public sealed class Frame(int version, string json, bool verified, BinaryReader reader, Stream? copy) : IDisposable
    {
        public int Version { get; } = version;
        public string Json { get; } = json;
        public bool Verified { get; } = verified;
        public BinaryReader Reader { get; } = reader;

        public void Dispose()
        {
            Reader.Dispose();
            copy?.Dispose();
        }
    }

    /// <summary>
    /// Checks the frame (magic, version, then the checksum over the whole file) and reads the JSON header;
    /// <paramref name="name"/> starts every message (for example "Checkpoint 'x.ckpt'").
    /// </summary>
    /// <exception cref="InvalidDataException">Another kind of file, a newer version, truncated, or damaged.</exception>
    public static Frame Open(Stream stream, byte[] magic, int maxVersion, int firstChecksummedVersion, string name, string kind)
    {
        MemoryStream? copy = null;
        try
        {
            if (!stream.CanSeek) stream = copy = CopyBounded(stream, name);
            long start = stream.Position, end = stream.Length;
            var reader = new BinaryReader(stream, Encoding.UTF8, leaveOpen: true);
            try
            {
                var read = reader.ReadBytes(magic.Length);
                if (!read.AsSpan().SequenceEqual(magic)) throw new InvalidDataException($"{name} is not a Man.ML {kind}.");
                int version = reader.ReadInt32();
                if (version < 1 || version > maxVersion)
                    throw new InvalidDataException($"{name} has format version {version}; this Man.ML reads versions 1 to {maxVersion}.");
                bool verified = end - start >= magic.Length + sizeof(int) + TrailerLength && Verify(stream, start, end, name);
                if (!verified && version >= firstChecksummedVersion)
                    throw new InvalidDataException($"{name} is truncated or damaged: format version {version} ends with a checksum, and it has none.");
                if (verified && version < firstChecksummedVersion)
                    throw new InvalidDataException($"{name} is damaged: format version {version} has no checksum, yet one was found.");
                stream.Position = start + magic.Length + sizeof(int);
                string json;
                try { json = reader.ReadString(); }
                catch (IOException e) when (e is not EndOfStreamException) { throw new InvalidDataException($"{name} has a damaged header.", e); }
                return new Frame(version, json, verified, reader, copy);
            }
            catch (Exception e) when (e is EndOfStreamException or FormatException)
            {
                reader.Dispose();
                throw new InvalidDataException($"{name} is truncated.", e);
            }
            catch
            {
                reader.Dispose();
                throw;
            }
        }
        catch
        {
            copy?.Dispose();
            throw;
        }
    }

    // Whether [start, end) ends with a trailer: then its checksum must match, or the file is refused.
    private static bool Verify(Stream stream, long start, long end, string name)
    {
        Span<byte> trailer = stackalloc byte[TrailerLength];
        stream.Position = end - TrailerLength;
        stream.ReadExactly(trailer);
        if (!trailer[..TrailerMagic.Length].SequenceEqual(TrailerMagic)) return false;
        stream.Position = start;
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        for (long left = end - TrailerLength - start; left > 0;)
        {
            int n = stream.Read(buffer, 0, (int)Math.Min(buffer.Length, left));
            if (n == 0) throw new EndOfStreamException();
            hash.AppendData(buffer, 0, n);
            left -= n;
        }
        if (!CryptographicOperations.FixedTimeEquals(hash.GetHashAndReset(), trailer[TrailerMagic.Length..]))
            throw new InvalidDataException($"{name} is damaged: its checksum does not match its contents (the file was changed after Man.ML wrote it).");
        return true;
    }

    private static MemoryStream CopyBounded(Stream stream, string name)
    {
        var copy = new MemoryStream();
        var buffer = new byte[1 << 20];
        for (int n; (n = stream.Read(buffer, 0, buffer.Length)) > 0;)
        {
            if (copy.Length + n > MaxInMemoryBytes)
            {
                copy.Dispose();
                throw new InvalidDataException($"{name} has more than the {MaxInMemoryBytes:N0} bytes Man.ML reads from a stream.");
            }
            copy.Write(buffer, 0, n);
        }
        copy.Position = 0;
        return copy;
    }

    /// <summary>An exception's message without libtorch's C++ backtrace ("Exception raised from ...", "frame #0 ..."), on one line.</summary>
    public static string Reason(Exception e)
    {
        var message = e.Message;
        int cut = message.IndexOf("Exception raised from", StringComparison.Ordinal);
        if (cut >= 0) message = message[..cut];
        return message.ReplaceLineEndings(" ").Trim();
    }

    // Forwards writes to the stream it wraps and hashes them; the writers never seek, so the hash is of the bytes in order.
    private sealed class HashingWriteStream(Stream inner) : Stream
    {
        private readonly IncrementalHash hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);

        public byte[] Hash() => hash.GetHashAndReset();

        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            hash.AppendData(buffer);
            inner.Write(buffer);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing) hash.Dispose();
            base.Dispose(disposing);
        }
    }
}
