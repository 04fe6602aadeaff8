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

/// <summary>Saves and loads trained backbones.</summary>
public static class ModelCheckpoint
{
    /// <summary>Current format version.</summary>
    public const int FormatVersion = 1;

    private static readonly byte[] Magic = "MANML-CKPT\n"u8.ToArray();
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Writes <paramref name="network"/> and <paramref name="info"/> to <paramref name="path"/> atomically.</summary>
    public static void Save(string path, UnitChainNetwork network, CheckpointInfo info)
    {
        AtomicFile.Write(path, stream =>
        {
            using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
            writer.Write(Magic);
            writer.Write(FormatVersion);
            writer.Write(JsonSerializer.Serialize(info, Json));
            network.save(writer);
        });
    }

    /// <summary>Loads a checkpoint written by <see cref="Save"/>.</summary>
    /// <exception cref="InvalidDataException">Not a Man.ML checkpoint, a newer format, or truncated.</exception>
    public static (UnitChainNetwork Network, CheckpointInfo Info) Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Checkpoint '{path}' does not exist.", path);
        using var stream = File.OpenRead(path);
        using var reader = new BinaryReader(stream, Encoding.UTF8);
        try
        {
            var magic = reader.ReadBytes(Magic.Length);
            if (!magic.AsSpan().SequenceEqual(Magic)) throw new InvalidDataException($"'{path}' is not a Man.ML checkpoint.");
            int version = reader.ReadInt32();
            if (version > FormatVersion)
                throw new InvalidDataException($"Checkpoint '{path}' has format version {version}; this Man.ML reads up to {FormatVersion}.");
            var info = JsonSerializer.Deserialize<CheckpointInfo>(reader.ReadString(), Json)
                ?? throw new InvalidDataException($"Checkpoint '{path}' has an empty header.");
            var network = Architectures.Create(info.Architecture, info.Classes, info.ImageSize);
            network.load(reader);
            return (network, info);
        }
        catch (EndOfStreamException e)
        {
            throw new InvalidDataException($"Checkpoint '{path}' is truncated.", e);
        }
    }
}

/// <summary>Writes files through a temporary name in the same folder and a rename.</summary>
public static class AtomicFile
{
    /// <summary>Writes <paramref name="path"/> with <paramref name="write"/>; the old file stays until the new one is complete.</summary>
    public static void Write(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        var temp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>Writes text atomically (UTF-8).</summary>
    public static void WriteText(string path, string text) =>
        Write(path, s => { var bytes = Encoding.UTF8.GetBytes(text); s.Write(bytes, 0, bytes.Length); });
}
