// Saving and loading pipelines that contain a Man.ML transformer. ML.NET (6.0.0, as 5.0.1) keeps its model-save context internal,
// so a third-party transformer cannot write itself into mlContext.Model.Save's zip (docs/PLATFORM.md §ML.NET). One file
// still holds the whole pipeline: a zip with the ML.NET transformers before and after the Man.ML one (each saved by
// mlContext.Model.Save, input schema included), the trained backbone, and a JSON description of the Man.ML transformer
// (image column, size, normalisation, the label's key values). Loading rebuilds the same chain, so a fresh process
// scores bit for bit the same and sees the same output schema (fixed-size Score, key-typed PredictedLabel).
// From format version 2 the zip's comment, the last bytes of the file, is "MANML-SHA256:" and the SHA-256 (hex) of
// every byte before those digits: the whole file, zip structure included, is verified before any entry is read.
// Every entry is read with a bounded size and every field of man.json is checked, so a damaged or hostile file is one
// InvalidDataException naming the file and what is wrong.
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
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
    private const int FormatVersion = 2, FirstChecksummedVersion = 2;
    private const string Before = "before.mlnet.zip", After = "after.mlnet.zip", Backbone = "backbone.ckpt", Description = "man.json";

    private static readonly byte[] ChecksumPrefix = "MANML-SHA256:"u8.ToArray();
    private const int HexDigits = 64, EndOfCentralDirectoryLength = 22;

    // What each entry may inflate to, checked against the size the zip declares before anything is inflated and again
    // while inflating (a damaged or hostile header can understate it): man.json is a few hundred bytes and the label's
    // key values (1 MiB holds 100,000 class names); the ML.NET chains around the Man.ML transformer load and map images
    // (256 MiB leaves room for a text featurizer's dictionary); the backbone and a model read from a stream that cannot
    // seek are held in one MemoryStream, at most Array.MaxLength bytes (the largest network here is 355 MB).
    internal const long MaxDescriptionBytes = 1 << 20, MaxChainBytes = 256L << 20;
    internal static long MaxInMemoryBytes => Array.MaxLength;

    // Scores are computed ScoringBatchSize images at a time; 65,536 images of 224 pixels are already 9.9 GB of pixels.
    private const int MaxScoringBatchSize = 1 << 16;

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
        // Built in memory: the zip writer seeks back into what it wrote, and the checksum is of the finished bytes.
        using var memory = new MemoryStream();
        using (var zip = new ZipArchive(memory, ZipArchiveMode.Create, leaveOpen: true))
        {
            zip.Comment = Encoding.ASCII.GetString(ChecksumPrefix) + new string('0', HexDigits); // the digits are filled in by Seal
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
            using var writer = new StreamWriter(zip.CreateEntry(Description).Open());
            writer.Write(description.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        Seal(memory);
        memory.Position = 0;
        memory.CopyTo(stream);
    }

    /// <summary>Writes the checksum of a zip whose comment is <see cref="ChecksumPrefix"/> and 64 digits into those digits.</summary>
    internal static void Seal(MemoryStream zip)
    {
        var bytes = zip.GetBuffer().AsSpan(0, (int)zip.Length);
        int digits = bytes.Length - HexDigits;
        if (digits - ChecksumPrefix.Length < 0 || !bytes[(digits - ChecksumPrefix.Length)..digits].SequenceEqual(ChecksumPrefix))
            throw new InvalidOperationException("The zip does not end with the checksum comment.");
        Encoding.ASCII.GetBytes(Convert.ToHexStringLower(SHA256.HashData(bytes[..digits]))).CopyTo(bytes[digits..]);
    }

    /// <summary>Loads a model saved by <see cref="SaveManModel(ModelOperationsCatalog, ITransformer, DataViewSchema, string)"/>;
    /// <paramref name="inputSchema"/> is the schema it expects.</summary>
    /// <param name="catalog">The model catalog (<c>mlContext.Model</c>).</param>
    /// <param name="path">The file.</param>
    /// <param name="inputSchema">The input schema saved with the model.</param>
    /// <param name="device">Device to score on. Default "cpu".</param>
    /// <exception cref="InvalidDataException">The file is not a Man.ML model, is truncated or damaged (its checksum does not
    /// match, or an entry or field is not what Man.ML writes), or is of a newer format.</exception>
    public static ITransformer LoadManModel(this ModelOperationsCatalog catalog, string path, out DataViewSchema inputSchema, string device = "cpu")
    {
        using var stream = InputFiles.OpenRead(path, "Model file");
        return Read(catalog, stream, $"Model '{path}'", out inputSchema, device);
    }

    /// <summary>Loads a model saved to a stream by <see cref="SaveManModel(ModelOperationsCatalog, ITransformer, DataViewSchema, Stream)"/>.</summary>
    /// <exception cref="InvalidDataException">The stream does not hold a Man.ML model, is truncated or damaged, or is of a newer format.</exception>
    public static ITransformer LoadManModel(this ModelOperationsCatalog catalog, Stream stream, out DataViewSchema inputSchema, string device = "cpu") =>
        Read(catalog, stream, "The model stream", out inputSchema, device);

    private static ITransformer Read(ModelOperationsCatalog catalog, Stream stream, string name, out DataViewSchema inputSchema, string device)
    {
        MemoryStream? copy = null;
        try
        {
            if (!stream.CanSeek)
                stream = copy = ReadBounded(stream, MaxInMemoryBytes)
                    ?? throw new InvalidDataException($"{name} has more than the {MaxInMemoryBytes:N0} bytes Man.ML reads from a stream.");
            long start = stream.Position;
            bool verified = Verify(stream, start, name);
            stream.Position = start;
            ZipArchive zip;
            try { zip = new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: true); }
            catch (Exception e) when (e is InvalidDataException or IOException or ArgumentException or NotSupportedException)
            {
                throw new InvalidDataException($"{name} is not a Man.ML model (not a zip file, or a damaged one: {e.Message})", e);
            }
            using (zip) return Read(catalog, zip, verified, name, out inputSchema, device);
        }
        finally
        {
            copy?.Dispose();
        }
    }

    // Whether the file ends with the checksum comment: then the checksum must match, or the file is refused.
    private static bool Verify(Stream stream, long start, string name)
    {
        long length = stream.Length - start;
        int tail = ChecksumPrefix.Length + HexDigits;
        if (length < EndOfCentralDirectoryLength + tail) return false;
        var recorded = new byte[tail];
        stream.Position = stream.Length - tail;
        stream.ReadExactly(recorded);
        if (!recorded.AsSpan(0, ChecksumPrefix.Length).SequenceEqual(ChecksumPrefix)) return false;
        stream.Position = start;
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        for (long left = length - HexDigits; left > 0;)
        {
            int n = stream.Read(buffer, 0, (int)Math.Min(buffer.Length, left));
            if (n == 0) throw new InvalidDataException($"{name} is truncated.");
            hash.AppendData(buffer, 0, n);
            left -= n;
        }
        var actual = Encoding.ASCII.GetBytes(Convert.ToHexStringLower(hash.GetHashAndReset()));
        if (!CryptographicOperations.FixedTimeEquals(actual, recorded.AsSpan(ChecksumPrefix.Length)))
            throw new InvalidDataException($"{name} is damaged: its checksum does not match its contents (the file was changed after Man.ML wrote it).");
        return true;
    }

    private static ITransformer Read(ModelOperationsCatalog catalog, ZipArchive zip, bool verified, string name, out DataViewSchema inputSchema,
        string device)
    {
        var limits = new[] { (Description, MaxDescriptionBytes), (Before, MaxChainBytes), (After, MaxChainBytes), (Backbone, MaxInMemoryBytes) };
        var entries = new Dictionary<string, ZipArchiveEntry>();
        foreach (var (entryName, limit) in limits) // every declared size is checked before anything is inflated
        {
            var entry = zip.GetEntry(entryName) ?? throw new InvalidDataException($"{name} is not a Man.ML model (no {entryName}).");
            if (entry.Length > limit)
                throw new InvalidDataException(
                    $"{name} is damaged: its {entryName} would inflate to {entry.Length:N0} bytes, more than the {limit:N0} Man.ML reads.");
            entries[entryName] = entry;
        }
        MemoryStream Inflate(string entryName)
        {
            var limit = limits.First(l => l.Item1 == entryName).Item2;
            MemoryStream? bytes;
            try
            {
                using var s = entries[entryName].Open();
                bytes = ReadBounded(s, limit);
            }
            catch (Exception e) when (e is InvalidDataException or IOException or NotSupportedException or ArgumentException)
            {
                throw new InvalidDataException($"{name} is damaged: its {entryName} cannot be read ({e.Message})", e);
            }
            return bytes ?? throw new InvalidDataException($"{name} is damaged: its {entryName} inflates to more than the {limit:N0} bytes Man.ML reads.");
        }

        ModelDescription description;
        using (var json = Inflate(Description)) description = ModelDescription.Parse(json, name);
        if (description.Version >= FirstChecksummedVersion && !verified)
            throw new InvalidDataException($"{name} is truncated or damaged: format version {description.Version} ends with a checksum, and it has none.");
        if (verified && description.Version < FirstChecksummedVersion)
            throw new InvalidDataException($"{name} is damaged: format version {description.Version} has no checksum, yet one was found.");

        ITransformer LoadChain(string entryName, out DataViewSchema schema)
        {
            using var s = Inflate(entryName);
            try { return catalog.Load(s, out schema); }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                throw new InvalidDataException($"{name} is damaged: ML.NET cannot load its {entryName} ({CheckpointFormat.Reason(e)})", e);
            }
        }
        var before = LoadChain(Before, out inputSchema);
        var after = LoadChain(After, out _);
        Models.UnitChainNetwork network;
        CheckpointInfo info;
        using (var s = Inflate(Backbone)) (network, info) = ModelCheckpoint.Load(s, $"The backbone in {name}");
        try
        {
            string Fail(string what) => throw new InvalidDataException($"{name} is damaged: {what}.");
            if (description.ImageSize != info.ImageSize)
                Fail($"man.json's image_size is {description.ImageSize}, its backbone's {info.ImageSize}");
            if (description.KeyValues is { } keys && keys.Count != info.Classes)
                Fail($"man.json's label_key_values has {keys.Count} values for {info.Classes} classes");
            if ((long)3 * info.ImageSize * info.ImageSize * description.ScoringBatchSize > Array.MaxLength)
                Fail($"man.json's scoring_batch_size {description.ScoringBatchSize} of {info.ImageSize}-pixel images is more than one buffer holds");
            Normalization normalization;
            try { normalization = info.Normalization; }
            catch (InvalidDataException e) { throw new InvalidDataException($"{name} is damaged: {e.Message}", e); }
            var man = new ManImageClassificationTransformer(network, description.KeyValues, normalization, description.ImageColumn,
                description.ImageSize, description.ScoringBatchSize, device, description.TrainedWith, description.Recipe)
            {
                Verified = verified && info.Verified,
            };
            return new TransformerChain<ITransformer>(Flatten(before).Append(man).Concat(Flatten(after)).ToArray());
        }
        catch
        {
            network.Dispose();
            throw;
        }
    }

    // The bytes of source, or null when it holds more than limit: the copy stops at limit + 1, whatever size was declared.
    private static MemoryStream? ReadBounded(Stream source, long limit)
    {
        var memory = new MemoryStream();
        var buffer = new byte[1 << 20];
        for (int n; (n = source.Read(buffer, 0, (int)Math.Min(buffer.Length, limit + 1 - memory.Length))) > 0;)
        {
            memory.Write(buffer, 0, n);
            if (memory.Length > limit)
            {
                memory.Dispose();
                return null;
            }
        }
        memory.Position = 0;
        return memory;
    }

    /// <summary>man.json, every field checked: its type, its range, and for a recipe or key values that Man.ML knows them.</summary>
    private sealed record ModelDescription(int Version, string ImageColumn, int ImageSize, int ScoringBatchSize, string TrainedWith,
        ImageRecipe Recipe, LabelKeyValues? KeyValues)
    {
        public static ModelDescription Parse(MemoryStream json, string name)
        {
            JsonNode? root;
            // Decoded strictly first: JsonNode checks a string's UTF-8 only when the value is read, and then throws
            // InvalidOperationException from wherever that happens.
            string text;
            try { text = StrictUtf8.GetString(json.GetBuffer(), 0, (int)json.Length); }
            catch (DecoderFallbackException e) { throw new InvalidDataException($"{name} is damaged: man.json is not UTF-8 text.", e); }
            try { root = JsonNode.Parse(text); }
            catch (JsonException e) { throw new InvalidDataException($"{name} is damaged: man.json is not JSON ({e.Message})", e); }
            if (root is not JsonObject o) throw new InvalidDataException($"{name} is damaged: man.json is not a JSON object.");
            InvalidDataException Bad(string field, string why) =>
                new($"{name} is damaged: man.json's {field} {why}, not {Show(o[field])}.");
            int Int(string field, int min, int max) =>
                o[field] is JsonValue v && v.TryGetValue<int>(out var x) && x >= min && x <= max ? x
                    : throw Bad(field, $"must be a whole number from {min} to {max:N0}");
            string Text(string field, bool empty) =>
                o[field] is JsonValue v && v.TryGetValue<string>(out var x) && (empty || x.Length > 0) ? x
                    : throw Bad(field, empty ? "must be a string" : "must be a non-empty string");

            if (o["format_version"] is JsonValue fv && fv.TryGetValue<int>(out var newer) && newer > FormatVersion)
                throw new InvalidDataException($"{name} has format version {newer}; this Man.ML reads up to {FormatVersion}.");
            int version = Int("format_version", 1, FormatVersion);
            var column = Text("image_column", empty: false);
            int size = Int("image_size", 1, ModelCheckpoint.MaxImageSize);
            int batch = Int("scoring_batch_size", 1, MaxScoringBatchSize);
            var trainedWith = Text("trained_with", empty: true);
            // Models saved before the recipe was stored were trained and scored with CIFAR's.
            var recipe = ImageRecipe.Cifar;
            if (o.ContainsKey("image_recipe"))
            {
                var recipeName = Text("image_recipe", empty: false);
                if (!Choices.TryParse(recipeName, out recipe) || recipe == ImageRecipe.Automatic)
                    throw Bad("image_recipe", $"must be one of {string.Join(", ", Choices.Names<ImageRecipe>().Where(n => n != "automatic"))}");
            }
            LabelKeyValues? keyValues = null;
            if (o["label_key_values"] is { } kv)
            {
                try { keyValues = LabelKeyValues.FromJson(kv); }
                catch (InvalidDataException e) { throw new InvalidDataException($"{name} is damaged: man.json's {e.Message}", e); }
            }
            return new ModelDescription(version, column, size, batch, trainedWith, recipe, keyValues);
        }

        private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

        private static string Show(JsonNode? node) => node is null ? "missing or null"
            : node.ToJsonString() is var text && text.Length > 40 ? text[..40] + "..." : node.ToJsonString();
    }

    private static IEnumerable<ITransformer> Flatten(ITransformer model) =>
        model is IEnumerable<ITransformer> chain ? chain.SelectMany(Flatten) : new[] { model };
}
