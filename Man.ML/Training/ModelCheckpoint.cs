// A trained backbone on disk: a small header (magic, format version, JSON description) followed by the weights in
// TorchSharp's format. Written to a temporary file and renamed into place, so a crash never leaves a torn file.
using System.Text;
using System.Text.Json;
using Man.ML.Models;
using TorchSharp;

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
        if (!File.Exists(path)) throw new FileNotFoundException($"Checkpoint '{path}' does not exist.", path);
        using var stream = File.OpenRead(path);
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
