// Everything a run needs to continue as if it had never stopped: the backbone, the auxiliary heads and MAN's copies
// (batch-norm statistics included), the optimizer's momentum buffers, libtorch's generator state, the epochs done and
// their metrics. Data order and augmentation are functions of (seed, epoch) and the learning rate of (epoch, iteration),
// so an epoch boundary needs nothing more. Written atomically; a checkpoint from another configuration, a newer format,
// a truncated file or a file that is not Man.ML's is a clear InvalidDataException.
using System.Text;
using System.Text.Json;
using Man.ML.Local;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Training;

/// <summary>What a run checkpoint says about itself.</summary>
public sealed record TrainingCheckpointHeader
{
    /// <summary>The configuration the run was started with, as a comparable string.</summary>
    public string Configuration { get; init; } = "";

    /// <summary>Epochs completed.</summary>
    public int EpochsCompleted { get; init; }

    /// <summary>Metrics of the completed epochs.</summary>
    public List<EpochMetrics> Epochs { get; init; } = new();
}

/// <summary>Saves and restores a run at an epoch boundary.</summary>
public static class TrainingCheckpoint
{
    /// <summary>Current format version.</summary>
    public const int FormatVersion = 1;

    private static readonly byte[] Magic = "MANML-RUN\n"u8.ToArray();
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>The configuration fingerprint a checkpoint must match to be resumed.</summary>
    public static string Fingerprint(TrainingOptions o) => string.Join("; ",
        $"dataset={o.Dataset}", $"arch={o.Architecture}", $"k={o.K}", $"split={o.SplitTable ?? "default"}", $"size={o.ImageSize}", $"rule={o.Rule}", $"rules={o.RuleSettings.DglHead}/{o.RuleSettings.InfoPro}",
        $"man={(o.Man is null ? "none" : $"{o.Man.Ablation}/{o.Man.Initialization}/{o.Man.Momentum}/{o.Man.LearnableMix}")}",
        $"epochs={o.Epochs}", $"batch={o.BatchSize}", $"lr={o.EffectiveLearningRate}", $"wd={o.WeightDecay}", $"seed={o.Seed}");

    /// <summary>Writes the state of <paramref name="trainer"/> after <paramref name="epochs"/> to <paramref name="path"/>.</summary>
    public static void Save(string path, TrainingOptions options, LocalTrainer trainer, IReadOnlyList<EpochMetrics> epochs)
    {
        var header = new TrainingCheckpointHeader { Configuration = Fingerprint(options), EpochsCompleted = epochs.Count, Epochs = epochs.ToList() };
        AtomicFile.Write(path, stream =>
        {
            using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
            writer.Write(Magic);
            writer.Write(FormatVersion);
            writer.Write(JsonSerializer.Serialize(header, Json));
            trainer.Network.save(writer);
            trainer.AuxiliaryModule.save(writer);
            trainer.Optimizer.save_state_dict(writer);
            using var rng = get_rng_state();
            rng.Save(writer);
        });
    }

    /// <summary>Reads only the header (to report or check a checkpoint without building anything).</summary>
    public static TrainingCheckpointHeader ReadHeader(string path)
    {
        using var stream = OpenChecked(path, out var reader, out var header);
        reader.Dispose();
        return header;
    }

    /// <summary>Restores <paramref name="trainer"/> (built from <paramref name="options"/>) from <paramref name="path"/>.</summary>
    /// <exception cref="InvalidDataException">Another configuration, a newer format, truncated, or not a Man.ML run checkpoint.</exception>
    public static TrainingCheckpointHeader Restore(string path, TrainingOptions options, LocalTrainer trainer)
    {
        using var stream = OpenChecked(path, out var reader, out var header);
        using (reader)
        {
            var expected = Fingerprint(options);
            if (header.Configuration != expected)
                throw new InvalidDataException($"Checkpoint '{path}' is from another configuration: it has [{header.Configuration}], this run is [{expected}].");
            try
            {
                trainer.Network.load(reader);
                trainer.AuxiliaryModule.load(reader);
                trainer.Optimizer.load_state_dict(reader);
                using var rng = get_rng_state();
                rng.Load(reader);
                set_rng_state(rng);
            }
            catch (Exception e) when (e is EndOfStreamException or ArgumentException or InvalidOperationException)
            {
                throw new InvalidDataException($"Checkpoint '{path}' is truncated or damaged: {e.Message}", e);
            }
        }
        return header;
    }

    private static FileStream OpenChecked(string path, out BinaryReader reader, out TrainingCheckpointHeader header)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"Checkpoint '{path}' does not exist.", path);
        var stream = File.OpenRead(path);
        reader = new BinaryReader(stream, Encoding.UTF8, leaveOpen: true);
        try
        {
            var magic = reader.ReadBytes(Magic.Length);
            if (!magic.AsSpan().SequenceEqual(Magic)) throw new InvalidDataException($"'{path}' is not a Man.ML run checkpoint.");
            int version = reader.ReadInt32();
            if (version > FormatVersion)
                throw new InvalidDataException($"Checkpoint '{path}' has format version {version}; this Man.ML reads up to {FormatVersion}.");
            header = JsonSerializer.Deserialize<TrainingCheckpointHeader>(reader.ReadString(), Json)
                     ?? throw new InvalidDataException($"Checkpoint '{path}' has an empty header.");
            return stream;
        }
        catch (Exception e) when (e is EndOfStreamException or JsonException)
        {
            reader.Dispose();
            stream.Dispose();
            throw new InvalidDataException($"Checkpoint '{path}' is truncated or damaged.", e);
        }
        catch
        {
            reader.Dispose();
            stream.Dispose();
            throw;
        }
    }
}
