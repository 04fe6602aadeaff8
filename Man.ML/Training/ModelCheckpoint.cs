// A trained backbone on disk: a small header (magic, format version, JSON description: architecture, classes, image
// size, class names, normalisation and the data recipe) followed by the weights in TorchSharp's format. The recipe was
// added to the header later; a header without it still loads, and CheckpointInfo.Recipe then infers it from the
// architecture, as every scorer did before. Written to a temporary file and renamed into place, so a crash never leaves a torn file.
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
    /// <summary>Current format version.</summary>
    public const int FormatVersion = 1;

    internal static readonly byte[] Magic = "MANML-CKPT\n"u8.ToArray();
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Writes <paramref name="network"/> and <paramref name="info"/> to <paramref name="path"/> atomically.</summary>
    public static void Save(string path, UnitChainNetwork network, CheckpointInfo info) =>
        AtomicFile.Write(path, stream => Save(stream, network, info));

    /// <summary>Writes <paramref name="network"/> and <paramref name="info"/> to <paramref name="stream"/> (left open).</summary>
    public static void Save(Stream stream, UnitChainNetwork network, CheckpointInfo info)
    {
        using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
        CheckpointFormat.WriteHeader(writer, Magic, FormatVersion, JsonSerializer.Serialize(info, Json));
        network.save(writer);
    }

    /// <summary>Loads a checkpoint written by <see cref="Save(string, UnitChainNetwork, CheckpointInfo)"/>.</summary>
    /// <exception cref="InvalidDataException">Not a Man.ML checkpoint, a newer format, or truncated.</exception>
    public static (UnitChainNetwork Network, CheckpointInfo Info) Load(string path)
    {
        using var stream = InputFiles.OpenRead(path, "Checkpoint");
        return Load(stream, $"Checkpoint '{path}'");
    }

    /// <summary>Loads a checkpoint from <paramref name="stream"/> (left open); <paramref name="name"/> names it in messages.</summary>
    /// <exception cref="InvalidDataException">Not a Man.ML checkpoint, a newer format, or truncated.</exception>
    public static (UnitChainNetwork Network, CheckpointInfo Info) Load(Stream stream, string name = "The checkpoint")
    {
        using var reader = new BinaryReader(stream, Encoding.UTF8, leaveOpen: true);
        var (_, json) = CheckpointFormat.ReadHeader(reader, Magic, FormatVersion, name, "checkpoint");
        CheckpointInfo info;
        try { info = JsonSerializer.Deserialize<CheckpointInfo>(json, Json) ?? throw new InvalidDataException($"{name} has an empty header."); }
        catch (JsonException e) { throw new InvalidDataException($"{name} has a damaged header: {e.Message}", e); }
        UnitChainNetwork network;
        try { network = Architectures.Create(info.Architecture, info.Classes, info.ImageSize); }
        catch (ArgumentException e) { throw new InvalidDataException($"{name} describes a network Man.ML cannot build: {e.Message}", e); }
        try
        {
            network.load(reader);
            return (network, info);
        }
        catch (Exception e) when (e is EndOfStreamException or ArgumentException or InvalidOperationException)
        {
            network.Dispose();
            throw new InvalidDataException($"{name} is truncated or damaged: {e.Message}", e);
        }
    }
}

/// <summary>
/// The frame every Man.ML checkpoint shares: magic bytes, a format version and a JSON header, then the payload. One
/// reader for all of them, so every kind reports a foreign, newer or truncated file the same way.
/// </summary>
internal static class CheckpointFormat
{
    public static void WriteHeader(BinaryWriter writer, byte[] magic, int version, string json)
    {
        writer.Write(magic);
        writer.Write(version);
        writer.Write(json);
    }

    /// <summary>Reads and checks the frame; <paramref name="name"/> starts every message (for example "Checkpoint 'x.ckpt'").</summary>
    /// <exception cref="InvalidDataException">Another kind of file, a newer version, or truncated.</exception>
    public static (int Version, string Json) ReadHeader(BinaryReader reader, byte[] magic, int maxVersion, string name, string kind)
    {
        try
        {
            var read = reader.ReadBytes(magic.Length);
            if (!read.AsSpan().SequenceEqual(magic)) throw new InvalidDataException($"{name} is not a Man.ML {kind}.");
            int version = reader.ReadInt32();
            if (version < 1 || version > maxVersion)
                throw new InvalidDataException($"{name} has format version {version}; this Man.ML reads versions 1 to {maxVersion}.");
            return (version, reader.ReadString());
        }
        catch (EndOfStreamException e)
        {
            throw new InvalidDataException($"{name} is truncated.", e);
        }
    }
}
