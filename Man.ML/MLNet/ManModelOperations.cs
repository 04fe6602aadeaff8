// Saving and loading pipelines that contain a Man.ML transformer. ML.NET 5.0.1 keeps its model-save context internal,
// so a third-party transformer cannot write itself into mlContext.Model.Save's zip (docs/PLATFORM.md §ML.NET). One file
// still holds the whole pipeline: a zip with the ML.NET transformers before and after the Man.ML one (each saved by
// mlContext.Model.Save, input schema included), the trained backbone, and a JSON description of the Man.ML transformer
// (image column, size, normalisation, the label's key values). Loading rebuilds the same chain, so a fresh process
// scores bit for bit the same and sees the same output schema (fixed-size Score, key-typed PredictedLabel).
using System.IO.Compression;
using System.Text.Json;
using System.Text.Json.Nodes;
using Man.ML.Data;
using Man.ML.Training;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.MLNet;

/// <summary><c>mlContext.Model.SaveManModel</c> and <c>mlContext.Model.LoadManModel</c>.</summary>
public static class ManModelOperations
{
    private const int FormatVersion = 1;
    private const string Before = "before.mlnet.zip", After = "after.mlnet.zip", Backbone = "backbone.ckpt", Description = "man.json";

    /// <summary>
    /// Saves <paramref name="model"/> (a Man.ML transformer, or a chain containing exactly one) with the schema of the
    /// data it was fitted on, to one file. Written to a temporary name and renamed: an interrupted save leaves no file.
    /// </summary>
    public static void SaveManModel(this ModelOperationsCatalog catalog, ITransformer model, DataViewSchema inputSchema, string path)
    {
        var (man, before, after) = Split(model);
        AtomicFile.Write(path, stream => Write(catalog, man, before, after, inputSchema, stream));
    }

    /// <summary>Saves <paramref name="model"/> as <see cref="SaveManModel(ModelOperationsCatalog, ITransformer, DataViewSchema, string)"/>
    /// does, to <paramref name="stream"/> (left open).</summary>
    public static void SaveManModel(this ModelOperationsCatalog catalog, ITransformer model, DataViewSchema inputSchema, Stream stream)
    {
        var (man, before, after) = Split(model);
        Write(catalog, man, before, after, inputSchema, stream);
    }

    private static (ManImageClassificationTransformer Man, ITransformer Before, ITransformer After) Split(ITransformer model)
    {
        var parts = Flatten(model).ToList();
        int at = parts.FindIndex(p => p is ManImageClassificationTransformer);
        if (at < 0 || parts.FindLastIndex(p => p is ManImageClassificationTransformer) != at)
            throw new ArgumentException("The model must contain exactly one ManImageClassificationTransformer.", nameof(model));
        return ((ManImageClassificationTransformer)parts[at], new TransformerChain<ITransformer>(parts.Take(at).ToArray()),
            new TransformerChain<ITransformer>(parts.Skip(at + 1).ToArray()));
    }

    private static void Write(ModelOperationsCatalog catalog, ManImageClassificationTransformer man, ITransformer before, ITransformer after,
        DataViewSchema inputSchema, Stream stream)
    {
        var manOutput = man.GetOutputSchema(before.GetOutputSchema(inputSchema));
        using var zip = new ZipArchive(stream, ZipArchiveMode.Create, leaveOpen: true);
        using (var entry = zip.CreateEntry(Before).Open()) catalog.Save(before, inputSchema, entry);
        using (var entry = zip.CreateEntry(After).Open()) catalog.Save(after, manOutput, entry);
        using (var entry = zip.CreateEntry(Backbone).Open())
            ModelCheckpoint.Save(entry, man.Network, new CheckpointInfo
            {
                Architecture = man.Network.Architecture,
                Classes = man.ClassCount,
                ImageSize = man.ImageSize,
                ClassNames = man.KeyValues?.Names() ?? Array.Empty<string>(),
                NormalizationMean = man.Normalization.Mean,
                NormalizationStd = man.Normalization.Std,
                TrainedWith = man.TrainedWith,
                ImageRecipe = man.ImageRecipe,
            });
        var description = new JsonObject
        {
            ["format_version"] = FormatVersion,
            ["image_column"] = man.ImageColumnName,
            ["image_size"] = man.ImageSize,
            ["scoring_batch_size"] = man.ScoringBatchSize,
            ["trained_with"] = man.TrainedWith,
            ["image_recipe"] = Choices.Name(man.ImageRecipe),
            ["label_key_values"] = man.KeyValues?.ToJson(),
        };
        using (var entry = new StreamWriter(zip.CreateEntry(Description).Open()))
            entry.Write(description.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Loads a model saved by <see cref="SaveManModel(ModelOperationsCatalog, ITransformer, DataViewSchema, string)"/>;
    /// <paramref name="inputSchema"/> is the schema it expects.</summary>
    /// <param name="catalog">The model catalog (<c>mlContext.Model</c>).</param>
    /// <param name="path">The file.</param>
    /// <param name="inputSchema">The input schema saved with the model.</param>
    /// <param name="device">Device to score on. Default "cpu".</param>
    /// <exception cref="InvalidDataException">The file is not a Man.ML model, is truncated, or is of a newer format.</exception>
    public static ITransformer LoadManModel(this ModelOperationsCatalog catalog, string path, out DataViewSchema inputSchema, string device = "cpu")
    {
        using var stream = InputFiles.OpenRead(path, "Model file");
        return Read(catalog, stream, $"'{path}'", out inputSchema, device);
    }

    /// <summary>Loads a model saved to a stream by <see cref="SaveManModel(ModelOperationsCatalog, ITransformer, DataViewSchema, Stream)"/>.</summary>
    /// <exception cref="InvalidDataException">The stream does not hold a Man.ML model, is truncated, or is of a newer format.</exception>
    public static ITransformer LoadManModel(this ModelOperationsCatalog catalog, Stream stream, out DataViewSchema inputSchema, string device = "cpu") =>
        Read(catalog, stream, "The stream", out inputSchema, device);

    private static ITransformer Read(ModelOperationsCatalog catalog, Stream stream, string name, out DataViewSchema inputSchema, string device)
    {
        ZipArchive zip;
        try { zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{name} is not a Man.ML model (not a zip file).", e); }
        using (zip)
        {
            ZipArchiveEntry Entry(string entry) => zip.GetEntry(entry) ?? throw new InvalidDataException($"{name} is not a Man.ML model (no {entry}).");
            JsonNode description;
            using (var reader = new StreamReader(Entry(Description).Open())) description = JsonNode.Parse(reader.ReadToEnd())!;
            int version = description["format_version"]!.GetValue<int>();
            if (version > FormatVersion)
                throw new InvalidDataException($"Model {name} has format version {version}; this Man.ML reads up to {FormatVersion}.");

            ITransformer before, after;
            using (var s = CopyToMemory(Entry(Before))) before = catalog.Load(s, out inputSchema);
            using (var s = CopyToMemory(Entry(After))) after = catalog.Load(s, out _);
            Models.UnitChainNetwork network;
            CheckpointInfo info;
            using (var s = CopyToMemory(Entry(Backbone))) (network, info) = ModelCheckpoint.Load(s, $"The backbone in {name}");
            var keyValues = description["label_key_values"] is { } kv ? LabelKeyValues.FromJson(kv) : null;
            var man = new ManImageClassificationTransformer(network, keyValues, new Normalization(info.NormalizationMean, info.NormalizationStd),
                description["image_column"]!.GetValue<string>(), description["image_size"]!.GetValue<int>(),
                description["scoring_batch_size"]!.GetValue<int>(), device, description["trained_with"]!.GetValue<string>(),
                // Models saved before the recipe was stored were trained and scored with CIFAR's.
                description["image_recipe"] is { } recipe ? Choices.Parse<ImageRecipe>(recipe.GetValue<string>(), "image_recipe") : ImageRecipe.Cifar);
            return new TransformerChain<ITransformer>(Flatten(before).Append(man).Concat(Flatten(after)).ToArray());
        }
    }

    private static MemoryStream CopyToMemory(ZipArchiveEntry entry)
    {
        var memory = new MemoryStream();
        using (var s = entry.Open()) s.CopyTo(memory);
        memory.Position = 0;
        return memory;
    }

    private static IEnumerable<ITransformer> Flatten(ITransformer model) =>
        model is IEnumerable<ITransformer> chain ? chain.SelectMany(Flatten) : new[] { model };
}
