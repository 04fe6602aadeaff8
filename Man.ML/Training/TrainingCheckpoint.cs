// Everything a run needs to continue as if it had never stopped: the backbone, the auxiliary heads and MAN's copies
// (batch-norm statistics included), the optimizer's momentum buffers, libtorch's generator state, the epochs done and
// their metrics. Data order and augmentation are functions of (seed, epoch) and the learning rate of (epoch, iteration),
// so an epoch boundary needs nothing more. The header holds the run's plan, compared key by key on resume: a checkpoint
// of another run is an InvalidOptionException naming the first key that differs; a newer format, a truncated or damaged
// file (format version 3 ends with a SHA-256 of the rest, verified before anything is read: CheckpointFormat) or a file
// that is not Man.ML's is a clear InvalidDataException.
using System.Text.Json;
using System.Text.Json.Nodes;
using Man.ML.Local;
using Man.ML.Models;

namespace Man.ML.Training;

/// <summary>What a run checkpoint says about itself.</summary>
internal sealed record TrainingCheckpointHeader
{
    /// <summary>The run's plan as JSON (<see cref="RunPlan.ToJson"/>); null in checkpoints of format version 1.</summary>
    public JsonObject? Plan { get; init; }

    /// <summary>Format version 1's configuration string (empty in later versions).</summary>
    public string Configuration { get; init; } = "";

    /// <summary>Epochs completed.</summary>
    public int EpochsCompleted { get; init; }

    /// <summary>Metrics of the completed epochs.</summary>
    public List<EpochMetrics> Epochs { get; init; } = new();

    /// <summary>Whether the file carried a checksum and it matched (false: format versions 1 and 2, which record none).</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public bool Verified { get; init; }
}

/// <summary>Saves and restores a run at an epoch boundary, to files or any stream.</summary>
internal static class TrainingCheckpoint
{
    /// <summary>Current format version (2: the header holds the run's plan; 3: the file ends with a SHA-256 of its contents).</summary>
    public const int FormatVersion = 3;

    private const int FirstChecksummedVersion = 3;

    private static readonly byte[] Magic = "MANML-RUN\n"u8.ToArray();
    private static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    // Format version 1 compared this string; kept so those checkpoints still resume.
    internal static string LegacyFingerprint(TrainingOptions o) => string.Join("; ",
        $"dataset={o.Dataset.Name}", $"arch={o.Architecture}", $"k={o.K}",
        $"split={(o.SplitTable is { } t ? Choices.Name(t) : "default")}", $"size={o.ImageSize}",
        $"rule={Choices.Name(o.Rule)}", $"rules={o.RuleSettings.DglHead}/{o.RuleSettings.InfoPro}",
        $"man={(o.Man is null ? "none" : $"{o.Man.Ablation}/{o.Man.Initialization}/{o.Man.EmaDecay}/{(o.Man.Mix == ManMix.Learnable)}")}",
        $"epochs={o.Epochs}", $"batch={o.BatchSize}", $"lr={o.EffectiveLearningRate}", $"wd={o.WeightDecay}", $"seed={o.Seed}");

    /// <summary>Writes the state of <paramref name="trainer"/> after <paramref name="epochs"/> to <paramref name="path"/> atomically.</summary>
    public static void Save(string path, RunPlan plan, LocalTrainer trainer, IReadOnlyList<EpochMetrics> epochs) =>
        AtomicFile.Write(path, stream => Save(stream, plan, trainer, epochs));

    /// <summary>Writes the state of <paramref name="trainer"/> after <paramref name="epochs"/> to <paramref name="stream"/> (left open).</summary>
    public static void Save(Stream stream, RunPlan plan, LocalTrainer trainer, IReadOnlyList<EpochMetrics> epochs)
    {
        var header = new TrainingCheckpointHeader { Plan = plan.ToJson(), EpochsCompleted = epochs.Count, Epochs = epochs.ToList() };
        CheckpointFormat.Write(stream, Magic, FormatVersion, JsonSerializer.Serialize(header, Json), writer =>
        {
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
        using var stream = Open(path);
        using var frame = OpenFrame(stream, $"Checkpoint '{path}'");
        return ReadHeader(frame, $"Checkpoint '{path}'");
    }

    /// <summary>Restores <paramref name="trainer"/> (built from <paramref name="plan"/>) from <paramref name="path"/>.</summary>
    /// <exception cref="InvalidOptionException">The checkpoint is from a run with other options; the message names the first that differs.</exception>
    /// <exception cref="InvalidDataException">A newer format, truncated, damaged (its checksum does not match), or not a Man.ML run checkpoint.</exception>
    public static TrainingCheckpointHeader Restore(string path, RunPlan plan, LocalTrainer trainer)
    {
        using var stream = Open(path);
        return Restore(stream, plan, trainer, $"Checkpoint '{path}'");
    }

    /// <summary>Restores <paramref name="trainer"/> from <paramref name="stream"/>; <paramref name="name"/> names it in messages.</summary>
    /// <exception cref="InvalidOptionException">The checkpoint is from a run with other options; the message names the first that differs.</exception>
    /// <exception cref="InvalidDataException">A newer format, truncated, damaged (its checksum does not match), or not a Man.ML run checkpoint.</exception>
    public static TrainingCheckpointHeader Restore(Stream stream, RunPlan plan, LocalTrainer trainer, string name = "The checkpoint")
    {
        using var frame = OpenFrame(stream, name);
        var header = ReadHeader(frame, name);
        EnsureSameRun(header, plan, name);
        var reader = frame.Reader;
        try
        {
            trainer.Network.load(reader);
            trainer.AuxiliaryModule.load(reader);
            trainer.Optimizer.load_state_dict(reader);
            using var rng = get_rng_state();
            rng.Load(reader);
            set_rng_state(rng);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"{name} is truncated or damaged: {CheckpointFormat.Reason(e)}", e);
        }
        return header;
    }

    /// <summary>Checks, from its header alone, that the checkpoint at <paramref name="path"/> is a run of <paramref name="plan"/>.</summary>
    /// <exception cref="InvalidOptionException">The checkpoint is from a run with other options; the message names the first that differs.</exception>
    public static void EnsureSameRun(string path, RunPlan plan) => EnsureSameRun(ReadHeader(path), plan, $"Checkpoint '{path}'");

    private static void EnsureSameRun(TrainingCheckpointHeader header, RunPlan plan, string name)
    {
        if (header.Plan is { } saved)
        {
            // Checkpoints written before the precision choice trained in float32.
            if (!saved.ContainsKey("precision"))
            {
                saved = saved.DeepClone().AsObject();
                saved["precision"] = Choices.Name(TrainingPrecision.Float32);
            }
            var differences = RunPlan.Differences(saved, plan.ToJson(), RunPlan.KeysFreeOnResume);
            if (differences.Count > 0)
            {
                var (key, was, now) = differences[0];
                throw new InvalidOptionException(key,
                    $"{name} is from a run with other options: {key} was {was} there and is {now} here" +
                    (differences.Count > 1 ? $" (also {string.Join(", ", differences.Skip(1).Select(d => d.Key))})" : "") +
                    "; resume with the options the run was started with.");
            }
        }
        else if (header.Configuration != LegacyFingerprint(plan.Options))
            throw new InvalidOptionException("configuration",
                $"{name} is from another configuration: it has [{header.Configuration}], this run is [{LegacyFingerprint(plan.Options)}].");
    }

    private static FileStream Open(string path) => InputFiles.OpenRead(path, "Checkpoint");

    private static CheckpointFormat.Frame OpenFrame(Stream stream, string name) =>
        CheckpointFormat.Open(stream, Magic, FormatVersion, FirstChecksummedVersion, name, "run checkpoint");

    private static TrainingCheckpointHeader ReadHeader(CheckpointFormat.Frame frame, string name)
    {
        TrainingCheckpointHeader header;
        try
        {
            header = JsonSerializer.Deserialize<TrainingCheckpointHeader>(frame.Json, Json) ?? throw new InvalidDataException($"{name} has an empty header.");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException or FormatException or NotSupportedException)
        {
            throw new InvalidDataException($"{name} has a damaged header: {CheckpointFormat.Reason(e)}", e);
        }
        string? wrong =
            header.Plan is null && header.Configuration is null ? "it holds neither a plan nor a configuration"
            : header.EpochsCompleted < 0 ? $"epochs_completed is {header.EpochsCompleted}"
            : header.Epochs is null || header.Epochs.Any(e => e is null) ? "epochs holds a null"
            : header.Epochs.Count != header.EpochsCompleted ? $"epochs holds {header.Epochs.Count} epochs, epochs_completed says {header.EpochsCompleted}"
            : null;
        if (wrong is not null) throw new InvalidDataException($"{name} has a damaged header: {wrong}.");
        return header with { Verified = frame.Verified };
    }
}
