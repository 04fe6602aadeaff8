using System.IO.Compression;
using System.Text;
using System.Text.Json.Nodes;
using Man.ML.Data;
using Man.ML.Local;
using Man.ML.MLNet;
using Man.ML.Models;
using Man.ML.Training;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.Tests;

/// <summary>
/// Every file Man.ML writes carries a checksum that its reader verifies before using any value: a flipped byte, a cut
/// file or a damaged field is one InvalidDataException naming the file and what is wrong, never a silent load and never
/// another exception; files written before the checksums still load, reported as unverified.
/// </summary>
[TestClass]
public sealed class FileIntegrityTests
{
    private const int FlipStride = 4097;
    private static readonly string[] Classes = { "cat", "dog", "owl" };
    private static readonly Normalization Odd = new(new[] { 0.5f, 0.4f, 0.3f }, new[] { 0.2f, 0.25f, 0.3f });

    private static UnitChainNetwork network = null!;
    private static Trainer runTrainer = null!;
    private static LocalTrainer runLocal = null!; // restored into again and again: every refusal comes before any state is read
    private static byte[] modelCheckpoint = null!, runCheckpoint = null!, modelZip = null!;

    private static TrainingOptions Tiny() => new() { Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 32, Seed = 3 };

    private static CheckpointInfo Info => new()
    {
        Architecture = "resnet8", Classes = Classes.Length, ImageSize = 32, ClassNames = Classes,
        NormalizationMean = Odd.Mean, NormalizationStd = Odd.Std, TrainedWith = "dgl K=2", ImageRecipe = ImageRecipe.Cifar,
    };

    private sealed class ImagePathRow
    {
        public string ImagePath { get; set; } = "";
    }

    [ClassInitialize]
    public static void WriteOneFileOfEachKind(TestContext _)
    {
        network = Architectures.Create("resnet8", Classes.Length, 32);
        network.eval();
        using (var memory = new MemoryStream())
        {
            ModelCheckpoint.Save(memory, network, Info);
            modelCheckpoint = memory.ToArray();
        }
        runTrainer = new Trainer(Tiny()) { CheckBackend = false };
        runLocal = runTrainer.CreateLocalTrainer(10, 32);
        using (var memory = new MemoryStream())
        {
            TrainingCheckpoint.Save(memory, runTrainer.Plan!, runLocal, Array.Empty<EpochMetrics>());
            runCheckpoint = memory.ToArray();
        }
        modelZip = SaveZip(network);
    }

    [ClassCleanup]
    public static void Release()
    {
        network.Dispose();
        runLocal.Dispose();
    }

    // An ML.NET model around an untrained backbone: loading images before it, nothing after; no training needed.
    private static byte[] SaveZip(UnitChainNetwork backbone)
    {
        var mlContext = new MLContext(0);
        var data = mlContext.Data.LoadFromEnumerable(new List<ImagePathRow>());
        var load = mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImagePathRow.ImagePath)).Fit(data);
        var man = new ManImageClassificationTransformer(backbone, LabelKeyValues.FromNames(Classes), Odd, "Image", 32, 16, "cpu", "dgl K=2",
            ImageRecipe.Cifar);
        using var memory = new MemoryStream();
        mlContext.Model.SaveManModel(new TransformerChain<ITransformer>(load, man), data.Schema, memory);
        return memory.ToArray();
    }

    private static (UnitChainNetwork Network, CheckpointInfo Info) LoadCheckpoint(byte[] bytes)
    {
        using var stream = new MemoryStream(bytes, writable: false);
        return ModelCheckpoint.Load(stream, "model.ckpt");
    }

    private static TrainingCheckpointHeader Restore(byte[] bytes)
    {
        using var stream = new MemoryStream(bytes, writable: false);
        return TrainingCheckpoint.Restore(stream, runTrainer.Plan!, runLocal, "run.ckpt");
    }

    private static ManImageClassificationTransformer LoadZip(byte[] bytes)
    {
        using var stream = new MemoryStream(bytes, writable: false);
        var chain = (IEnumerable<ITransformer>)new MLContext(0).Model.LoadManModel(stream, out _);
        return chain.OfType<ManImageClassificationTransformer>().Single();
    }

    // The reader must refuse with exactly InvalidDataException, in one clean line naming what it read.
    private static string Refused(Action load, string what)
    {
        Exception? thrown = null;
        try { load(); }
        catch (Exception e) { thrown = e; }
        Assert.IsNotNull(thrown, $"{what} was accepted.");
        Assert.IsInstanceOfType<InvalidDataException>(thrown, $"{what}: {thrown.GetType().Name}: {thrown.Message}");
        Assert.IsFalse(thrown.Message.Contains("Exception raised from") || thrown.Message.Contains("frame #") || thrown.Message.Contains('\n'),
            $"{what}: {thrown.Message}");
        return thrown.Message;
    }

    private static byte[] Flipped(byte[] bytes, int at)
    {
        var copy = (byte[])bytes.Clone();
        copy[at] ^= 0xFF;
        return copy;
    }

    private static IEnumerable<int> FlipOffsets(int length)
    {
        for (int i = 0; i < length; i += FlipStride) yield return i;
        yield return length - 1; // the last byte of the checksum itself
    }

    [TestMethod]
    public void EveryFlippedByteOfAModelCheckpointIsRefused()
    {
        foreach (int at in FlipOffsets(modelCheckpoint.Length))
            StringAssert.Contains(Refused(() => LoadCheckpoint(Flipped(modelCheckpoint, at)).Network.Dispose(), $"model.ckpt flipped at {at}"),
                "model.ckpt");
        var (intact, info) = LoadCheckpoint(modelCheckpoint);
        intact.Dispose();
        Assert.IsTrue(info.Verified);
    }

    [TestMethod]
    public void EveryFlippedByteOfARunCheckpointIsRefused()
    {
        foreach (int at in FlipOffsets(runCheckpoint.Length))
            StringAssert.Contains(Refused(() => Restore(Flipped(runCheckpoint, at)), $"run.ckpt flipped at {at}"), "run.ckpt");
        Assert.IsTrue(Restore(runCheckpoint).Verified);
    }

    [TestMethod]
    public void EveryFlippedByteOfAnMLNetModelIsRefused()
    {
        foreach (int at in FlipOffsets(modelZip.Length))
            Refused(() => LoadZip(Flipped(modelZip, at)).Dispose(), $"model zip flipped at {at}");
        using var intact = LoadZip(modelZip);
        Assert.IsTrue(intact.Verified);
    }

    [TestMethod]
    public void TruncatedFilesAreRefused()
    {
        static int[] Cuts(int length) => new[] { 0, 1, 12, 200, length / 3, length / 2, length - CheckpointFormat.TrailerLength - 1,
            length - CheckpointFormat.TrailerLength, length - 1 };
        foreach (int cut in Cuts(modelCheckpoint.Length))
            Refused(() => LoadCheckpoint(modelCheckpoint[..cut]).Network.Dispose(), $"model.ckpt cut at {cut}");
        foreach (int cut in Cuts(runCheckpoint.Length))
            Refused(() => Restore(runCheckpoint[..cut]), $"run.ckpt cut at {cut}");
        foreach (int cut in Cuts(modelZip.Length))
            Refused(() => LoadZip(modelZip[..cut]).Dispose(), $"model zip cut at {cut}");
        StringAssert.Contains(Refused(() => LoadCheckpoint(modelCheckpoint[..(modelCheckpoint.Length / 2)]), "half"), "truncated");
    }

    [TestMethod]
    public void ChangingTheVersionOrCuttingTheChecksumDoesNotSkipTheCheck()
    {
        int versionAt = ModelCheckpoint.Magic.Length;
        var downgraded = (byte[])modelCheckpoint.Clone();
        BitConverter.GetBytes(1).CopyTo(downgraded, versionAt);
        StringAssert.Contains(Refused(() => LoadCheckpoint(downgraded), "model.ckpt claiming version 1"), "checksum does not match");

        var runDowngraded = (byte[])runCheckpoint.Clone();
        BitConverter.GetBytes(2).CopyTo(runDowngraded, "MANML-RUN\n".Length);
        StringAssert.Contains(Refused(() => Restore(runDowngraded), "run.ckpt claiming version 2"), "checksum does not match");

        StringAssert.Contains(Refused(() => LoadCheckpoint(modelCheckpoint[..^CheckpointFormat.TrailerLength]), "model.ckpt without trailer"),
            "it has none");
        StringAssert.Contains(Refused(() => LoadZip(EditZip(modelZip, json => json["format_version"] = 1, seal: false)),
            "model zip claiming version 1"), "checksum does not match");
        var stripped = EditZip(modelZip, _ => { }, seal: false, comment: "");
        StringAssert.Contains(Refused(() => LoadZip(stripped), "model zip without checksum"), "it has none");
    }

    // A copy of an ML.NET model zip with man.json edited; sealed: its checksum rewritten to match, as a hostile file would.
    private static byte[] EditZip(byte[] zip, Action<JsonObject> edit, bool seal = true, string? comment = null) =>
        ReplaceEntry(zip, "man.json", bytes =>
        {
            var json = JsonNode.Parse(bytes)!.AsObject();
            edit(json);
            return Encoding.UTF8.GetBytes(json.ToJsonString());
        }, seal, comment);

    private static byte[] ReplaceEntry(byte[] zip, string entryName, Func<byte[], byte[]> replace, bool seal = true, string? comment = null)
    {
        using var memory = new MemoryStream();
        memory.Write(zip);
        using (var archive = new ZipArchive(memory, ZipArchiveMode.Update, leaveOpen: true))
        {
            var entry = archive.GetEntry(entryName)!;
            byte[] old;
            using (var s = entry.Open())
            using (var copy = new MemoryStream())
            {
                s.CopyTo(copy);
                old = copy.ToArray();
            }
            entry.Delete();
            using (var s = archive.CreateEntry(entryName).Open()) s.Write(replace(old));
            if (comment is not null) archive.Comment = comment;
        }
        if (seal) ManModelOperations.Seal(memory);
        return memory.ToArray();
    }

    [TestMethod]
    public void EachDamagedFieldOfManJsonIsNamed()
    {
        var cases = new (string Field, Action<JsonObject> Edit)[]
        {
            ("format_version", j => j["format_version"] = "2"),
            ("format_version", j => j.Remove("format_version")),
            ("format version 3", j => j["format_version"] = 3),
            ("image_size", j => j["image_size"] = 0),
            ("image_size", j => j["image_size"] = "32"),
            ("image_size", j => j["image_size"] = 64), // not the backbone's
            ("scoring_batch_size", j => j["scoring_batch_size"] = -4),
            ("scoring_batch_size", j => j["scoring_batch_size"] = 1.5),
            ("image_column", j => j["image_column"] = ""),
            ("image_column", j => j["image_column"] = 7),
            ("trained_with", j => j["trained_with"] = null),
            ("image_recipe", j => j["image_recipe"] = "bogus"),
            ("image_recipe", j => j["image_recipe"] = "automatic"),
            ("label_key_values", j => j["label_key_values"] = "cat"),
            ("label_key_values", j => j["label_key_values"]!["type"] = "complex"),
            ("label_key_values", j => j["label_key_values"]!["values"] = new JsonArray(1, 2, 3)),
            ("label_key_values", j => j["label_key_values"]!["values"] = new JsonArray("cat", "dog")), // 2 values, 3 classes
        };
        foreach (var (field, edit) in cases)
        {
            var message = Refused(() => LoadZip(EditZip(modelZip, edit)).Dispose(), $"man.json with a damaged {field}");
            StringAssert.Contains(message, field);
        }
        foreach (var text in new[] { "not json {", "{}", "null", "[1, 2]", "\"text\"" })
        {
            var damaged = ReplaceEntry(modelZip, "man.json", _ => Encoding.UTF8.GetBytes(text));
            StringAssert.Contains(Refused(() => LoadZip(damaged).Dispose(), $"man.json '{text}'"), text == "{}" ? "format_version" : "man.json");
        }
        // The same edit without the checksum rewritten: the checksum refuses it first.
        StringAssert.Contains(Refused(() => LoadZip(EditZip(modelZip, j => j["image_size"] = 0, seal: false)), "edited man.json"),
            "checksum does not match");
    }

    [TestMethod]
    public void RandomBytesInTheEmbeddedMLNetModelsAreRefused()
    {
        var random = new Random(26);
        foreach (var entry in new[] { "before.mlnet.zip", "after.mlnet.zip" })
        {
            var noise = new byte[2000];
            random.NextBytes(noise);
            StringAssert.Contains(Refused(() => LoadZip(ReplaceEntry(modelZip, entry, _ => noise)).Dispose(), $"noise in {entry}"), entry);
            StringAssert.Contains(Refused(() => LoadZip(ReplaceEntry(modelZip, entry, old => old[..(old.Length / 2)])).Dispose(),
                $"half of {entry}"), entry);
            // A flipped byte in the inner zip with the outer checksum rewritten: loads (a byte ML.NET ignores) or is refused cleanly.
            byte[] inner = Array.Empty<byte>();
            ReplaceEntry(modelZip, entry, old => inner = old);
            for (int at = 0; at < inner.Length; at += 53)
            {
                var damaged = ReplaceEntry(modelZip, entry, old => Flipped(old, at));
                try { LoadZip(damaged).Dispose(); }
                catch (Exception e) when (e is not InvalidDataException)
                {
                    Assert.Fail($"{entry} flipped at {at}: {e.GetType().Name}: {e.Message}");
                }
                catch (InvalidDataException e)
                {
                    Assert.IsFalse(e.Message.Contains('\n') || e.Message.Contains("Exception raised from"), e.Message);
                }
            }
        }
        var backboneNoise = new byte[5000];
        random.NextBytes(backboneNoise);
        StringAssert.Contains(Refused(() => LoadZip(ReplaceEntry(modelZip, "backbone.ckpt", _ => backboneNoise)).Dispose(), "noise backbone"),
            "backbone");
    }

    // Sets the uncompressed size a zip declares for an entry, in its central directory and its local header.
    private static byte[] DeclareSize(byte[] zip, string entryName, uint size)
    {
        var bytes = (byte[])zip.Clone();
        var name = Encoding.ASCII.GetBytes(entryName);
        int patched = 0;
        for (int i = 0; i + 46 < bytes.Length; i++)
        {
            uint signature = BitConverter.ToUInt32(bytes, i);
            if (signature == 0x02014b50 && bytes.AsSpan(i + 46, name.Length).SequenceEqual(name)
                && BitConverter.ToUInt16(bytes, i + 28) == name.Length)
            {
                BitConverter.GetBytes(size).CopyTo(bytes, i + 24);
                patched++;
            }
            else if (signature == 0x04034b50 && bytes.AsSpan(i + 30, name.Length).SequenceEqual(name)
                && BitConverter.ToUInt16(bytes, i + 26) == name.Length)
            {
                BitConverter.GetBytes(size).CopyTo(bytes, i + 22);
                patched++;
            }
        }
        Assert.AreEqual(2, patched, $"{entryName} headers");
        using var memory = new MemoryStream();
        memory.Write(bytes);
        ManModelOperations.Seal(memory);
        return memory.ToArray();
    }

    [TestMethod]
    public void AnEntryThatWouldInflateBeyondItsLimitIsRefused()
    {
        // Declared 3 GiB: refused from the declared size, before anything is inflated.
        var declared = DeclareSize(modelZip, "backbone.ckpt", 3u << 30);
        var message = Refused(() => LoadZip(declared), "backbone declared at 3 GiB");
        StringAssert.Contains(message, "backbone.ckpt");
        StringAssert.Contains(message, "would inflate to 3,221,225,472 bytes");

        // Over the limit: refused, named. Declaring less than it holds does not get more read: the zip reader stops at the
        // declared size and the reader's copy at the limit, so the cut JSON is refused.
        var padded = ReplaceEntry(modelZip, "man.json", old => old.Concat(new byte[ManModelOperations.MaxDescriptionBytes + 10].Select(_ => (byte)' '))
            .ToArray());
        StringAssert.Contains(Refused(() => LoadZip(padded), "man.json over its limit"), "man.json");
        var lying = DeclareSize(padded, "man.json", 60);
        StringAssert.Contains(Refused(() => LoadZip(lying), "man.json lying about its size"), "man.json");
    }

    [TestMethod]
    public void DamagedCheckpointHeadersAreRefusedBeforeANetworkIsBuilt()
    {
        var cases = new (string Field, CheckpointInfo Info)[]
        {
            ("architecture", Info with { Architecture = "resnet9" }),
            ("architecture", Info with { Architecture = "resnet60002" }),
            ("classes", Info with { Classes = 0 }),
            ("classes", Info with { Classes = 10_000_000 }),
            ("image_size", Info with { ImageSize = 0 }),
            ("image_size", Info with { ImageSize = 4 }),
            ("image_size", Info with { Architecture = "resnet18", ImageSize = 16 }),
            ("image_size", Info with { ImageSize = 100_000 }),
            ("class_names", Info with { ClassNames = new[] { "a", "b" } }),
            ("normalization", Info with { NormalizationStd = new[] { 0.2f, 0f, 0.3f } }),
            ("normalization", Info with { NormalizationMean = new[] { 0.5f, 0.4f } }),
        };
        foreach (var (field, info) in cases)
        {
            using var memory = new MemoryStream();
            ModelCheckpoint.Save(memory, network, info);
            StringAssert.Contains(Refused(() => LoadCheckpoint(memory.ToArray()).Network.Dispose(), $"damaged {field}"), field);
        }
        foreach (var json in new[] { "null", "{}", "[]", "not json", "{\"architecture\": 5}", "{\"architecture\": \"resnet8\", \"image_recipe\": 3}" })
        {
            using var memory = new MemoryStream();
            CheckpointFormat.Write(memory, ModelCheckpoint.Magic, ModelCheckpoint.FormatVersion, json, w => network.save(w));
            Refused(() => LoadCheckpoint(memory.ToArray()).Network.Dispose(), $"header {json}");
        }
        var infinite = System.Text.Json.JsonSerializer.Serialize(Info, new System.Text.Json.JsonSerializerOptions
        {
            PropertyNamingPolicy = System.Text.Json.JsonNamingPolicy.SnakeCaseLower,
        }).Replace("\"normalization_std\":[0.2", "\"normalization_std\":[1e39", StringComparison.Ordinal);
        using (var memory = new MemoryStream())
        {
            CheckpointFormat.Write(memory, ModelCheckpoint.Magic, ModelCheckpoint.FormatVersion, infinite, w => network.save(w));
            StringAssert.Contains(Refused(() => LoadCheckpoint(memory.ToArray()).Network.Dispose(), "infinite deviation"), "normalization");
        }
    }

    [TestMethod]
    public void DamagedRunCheckpointHeadersAreRefused()
    {
        var magic = "MANML-RUN\n"u8.ToArray();
        // The real header with one field changed, the checksum recomputed.
        using var input = new BinaryReader(new MemoryStream(runCheckpoint), Encoding.UTF8);
        input.ReadBytes(magic.Length);
        input.ReadInt32();
        var header = JsonNode.Parse(input.ReadString())!.AsObject();
        var payload = input.ReadBytes((int)(input.BaseStream.Length - input.BaseStream.Position - CheckpointFormat.TrailerLength));
        foreach (var (field, value) in new (string, JsonNode?)[] { ("epochs_completed", -1), ("epochs_completed", 2), ("epochs", null),
            ("epochs_completed", "zero") })
        {
            var edited = header.DeepClone().AsObject();
            edited[field] = value;
            using var memory = new MemoryStream();
            CheckpointFormat.Write(memory, magic, TrainingCheckpoint.FormatVersion, edited.ToJsonString(), w => w.Write(payload));
            StringAssert.Contains(Refused(() => Restore(memory.ToArray()), $"run.ckpt with {field} {value?.ToJsonString()}"), "run.ckpt");
        }
    }

    // A stream that cannot seek, as a zip entry or a pipe: read into memory with a bound, then verified.
    private sealed class ForwardOnly(byte[] bytes) : MemoryStream(bytes, writable: false)
    {
        public override bool CanSeek => false;
    }

    [TestMethod]
    public void StreamsThatCannotSeekAreVerifiedToo()
    {
        var (loaded, info) = ModelCheckpoint.Load(new ForwardOnly(modelCheckpoint), "forward-only model.ckpt");
        loaded.Dispose();
        Assert.IsTrue(info.Verified);
        Refused(() => ModelCheckpoint.Load(new ForwardOnly(Flipped(modelCheckpoint, modelCheckpoint.Length / 2)), "forward-only"), "flipped");
        var model = (IEnumerable<ITransformer>)new MLContext(0).Model.LoadManModel(new ForwardOnly(modelZip), out _);
        model.OfType<ManImageClassificationTransformer>().Single().Dispose();
        Refused(() => new MLContext(0).Model.LoadManModel(new ForwardOnly(Flipped(modelZip, modelZip.Length / 2)), out _), "flipped zip");
    }

    // The frame of model checkpoint version 1, as Man.ML wrote it before checksums: magic, version, JSON, weights.
    private static byte[] LegacyModelCheckpoint()
    {
        using var memory = new MemoryStream();
        using (var writer = new BinaryWriter(memory, Encoding.UTF8, leaveOpen: true))
        {
            writer.Write("MANML-CKPT\n"u8.ToArray());
            writer.Write(1);
            writer.Write(System.Text.Json.JsonSerializer.Serialize(new
            {
                architecture = "resnet8", classes = Classes.Length, image_size = 32, class_names = Classes,
                normalization_mean = Odd.Mean, normalization_std = Odd.Std, trained_with = "dgl K=2",
            }));
            network.save(writer);
        }
        return memory.ToArray();
    }

    [TestMethod]
    public void FilesWrittenBeforeChecksumsStillLoadAndSayTheyAreUnverified()
    {
        var legacy = LegacyModelCheckpoint();
        var (loaded, info) = LoadCheckpoint(legacy);
        loaded.Dispose();
        Assert.IsFalse(info.Verified);
        Assert.AreEqual("resnet8", info.Architecture);

        // Run checkpoint version 2: the same frame as version 3, without the trailer.
        var run = (byte[])runCheckpoint[..^CheckpointFormat.TrailerLength].Clone();
        BitConverter.GetBytes(2).CopyTo(run, "MANML-RUN\n".Length);
        Assert.IsFalse(Restore(run).Verified);

        // ML.NET model version 1: no checksum comment, format_version 1, a version-1 backbone.
        var oldZip = ReplaceEntry(EditZip(modelZip, j => j["format_version"] = 1, seal: false, comment: ""), "backbone.ckpt", _ => legacy,
            seal: false);
        using (var man = LoadZip(oldZip)) Assert.IsFalse(man.Verified);
        // Its fields are still checked.
        StringAssert.Contains(Refused(() => LoadZip(EditZip(oldZip, j => j["image_size"] = 0, seal: false)), "legacy zip, image_size 0"),
            "image_size");

        var path = Path.Combine(Path.GetTempPath(), $"legacy-{Guid.NewGuid():N}.ckpt");
        try
        {
            File.WriteAllBytes(path, legacy);
            using var transformer = ManImageClassificationTransformer.FromCheckpoint(path);
            Assert.IsFalse(transformer.Verified);
        }
        finally { File.Delete(path); }
    }
}
