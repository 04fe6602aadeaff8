using System.Diagnostics;
using Man.ML.Data;
using Man.ML.Interop;
using Man.ML.Local;
using Man.ML.MLNet;
using Man.ML.Models;
using Man.ML.Training;
using Microsoft.ML;
using SkiaSharp;

namespace Man.ML.Tests;

/// <summary>
/// A seeded mutation fuzzer for every reader of a file a user hands Man.ML. Each round takes a valid file of the kind,
/// applies one to four random mutations (a bit flipped; a byte set to 0, 0x7F or 0xFF; a run of random bytes; a
/// truncation; a run removed or repeated; a 32-bit field set to an extreme value) and gives it to the reader. The only
/// outcomes allowed are a loaded file and the reader's declared exception, whose message holds no libtorch backtrace;
/// anything else, or a read that does not finish, fails with the round's seed and keeps the input for replay.
/// Each reader runs for MANML_FUZZ_SECONDS (default 4) from seed MANML_FUZZ_SEED (default 26); the rounds tried per
/// reader are printed.
/// </summary>
[TestClass]
public sealed class ReaderFuzzTests
{
    private static readonly TimeSpan PerInput = TimeSpan.FromSeconds(60);

    private static double Seconds => double.TryParse(Environment.GetEnvironmentVariable("MANML_FUZZ_SECONDS"), out var s) ? s : 4;

    private static int BaseSeed => int.TryParse(Environment.GetEnvironmentVariable("MANML_FUZZ_SEED"), out var s) ? s : 26;

    internal static byte[] Mutate(byte[] input, Random random)
    {
        var data = new List<byte>(input);
        int mutations = random.Next(1, 5);
        for (int m = 0; m < mutations && data.Count > 0; m++)
        {
            int at = random.Next(data.Count);
            int run = Math.Min(data.Count - at, 1 + random.Next(64));
            switch (random.Next(7))
            {
                case 0: data[at] ^= (byte)(1 << random.Next(8)); break;
                case 1: data[at] = new byte[] { 0, 0x7F, 0xFF }[random.Next(3)]; break;
                case 2: for (int i = 0; i < run; i++) data[at + i] = (byte)random.Next(256); break;
                case 3: data.RemoveRange(at, data.Count - at); break;
                case 4: data.RemoveRange(at, run); break;
                case 5: data.InsertRange(at, data.GetRange(at, run)); break;
                default:
                    if (at + 4 <= data.Count)
                    {
                        var value = BitConverter.GetBytes(new[] { int.MaxValue, int.MinValue, -1, 0, 1 << 30 }[random.Next(5)]);
                        for (int i = 0; i < 4; i++) data[at + i] = value[i];
                    }
                    break;
            }
        }
        return data.ToArray();
    }

    /// <summary>Mutates <paramref name="seedFile"/> for the time bound; returns the rounds tried and how many loaded.</summary>
    private static (int Rounds, int Loaded) Fuzz(string kind, byte[] seedFile, Action<byte[]> read, params Type[] declared) =>
        Fuzz(kind, seedFile, random => Mutate(seedFile, random), read, declared);

    /// <summary>
    /// Mutates all but the last <paramref name="tailLength"/> bytes (the checksum) of <paramref name="seedFile"/> and has
    /// <paramref name="reseal"/> write a checksum that matches, so that the mutations reach the parser behind the check.
    /// </summary>
    private static (int Rounds, int Loaded) FuzzResealed(string kind, byte[] seedFile, int tailLength, Func<byte[], byte[]> reseal,
        Action<byte[]> read, params Type[] declared)
    {
        var body = seedFile[..^tailLength];
        var tail = seedFile[^tailLength..];
        return Fuzz(kind, seedFile, random => reseal(Mutate(body, random).Concat(tail).ToArray()), read, declared);
    }

    private static (int Rounds, int Loaded) Fuzz(string kind, byte[] seedFile, Func<Random, byte[]> mutate, Action<byte[]> read, Type[] declared)
    {
        var clock = Stopwatch.StartNew();
        int rounds = 0, loaded = 0, tried = 0;
        while (clock.Elapsed.TotalSeconds < Seconds)
        {
            int seed = BaseSeed * 1_000_003 + tried++;
            var input = mutate(new Random(seed));
            rounds++;
            if (input.AsSpan().SequenceEqual(seedFile)) { rounds--; continue; } // a mutation that changed nothing (a byte set to its own value)
            var task = Task.Run(() => read(input));
            bool finished;
            try { finished = task.Wait(PerInput); }
            catch (AggregateException) { finished = true; }
            string replay() => Keep(kind, seed, input);
            if (!finished)
                Assert.Fail($"{kind}: round {rounds} (MANML_FUZZ_SEED={BaseSeed}, seed {seed}) did not finish in {PerInput}; input kept at {replay()}");
            if (task.Exception?.InnerException is { } e)
            {
                if (!declared.Any(t => t.IsInstanceOfType(e)))
                    Assert.Fail($"{kind}: round {rounds} (seed {seed}) threw {e.GetType().Name}, not one of the reader's declared " +
                        $"{string.Join(", ", declared.Select(t => t.Name))}; input kept at {replay()}\n{e}");
                if (e.Message.Contains("Exception raised from", StringComparison.Ordinal) || e.Message.Contains("frame #", StringComparison.Ordinal))
                    Assert.Fail($"{kind}: round {rounds} (seed {seed}): a libtorch backtrace reached the message; input kept at {replay()}\n{e.Message}");
                if (e.Message.Length == 0) Assert.Fail($"{kind}: round {rounds} (seed {seed}): an empty message");
            }
            else loaded++;
        }
        Console.WriteLine($"{kind}: {rounds} mutated inputs in {clock.Elapsed.TotalSeconds:F1} s, {loaded} loaded, {rounds - loaded} refused " +
            $"with {string.Join(" or ", declared.Select(t => t.Name))}");
        Assert.IsTrue(rounds > 0);
        return (rounds, loaded);
    }

    private static string Keep(string kind, int seed, byte[] input)
    {
        var path = Path.Combine(Path.GetTempPath(), $"manml-fuzz-{kind.Replace(' ', '-').Replace('.', '-')}-{seed}.bin");
        File.WriteAllBytes(path, input);
        return path;
    }

    // Readers that take a path: the input is written to a file of the right name first.
    private static Action<byte[]> ThroughFile(string name, Action<string> read) => bytes =>
    {
        var dir = TestSupport.NewTempFolder();
        try
        {
            var path = Path.Combine(dir, name);
            File.WriteAllBytes(path, bytes);
            read(path);
        }
        finally { Directory.Delete(dir, true); }
    };

    private static TrainingOptions Tiny => new() { Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 32, Seed = 5 };

    [TestMethod]
    [TestCategory("Slow")] // a few seconds of mutations per reader
    public void ModelCheckpointReaderLoadsOrRefusesEveryMutation()
    {
        using var network = Architectures.Create("resnet8", 10, 32);
        using var memory = new MemoryStream();
        ModelCheckpoint.Save(memory, network, new CheckpointInfo
        {
            Architecture = "resnet8", Classes = 10, ImageSize = 32, ClassNames = CifarBinary.DefaultClassNames.ToArray(),
            NormalizationMean = Normalization.Cifar.Mean, NormalizationStd = Normalization.Cifar.Std, ImageRecipe = ImageRecipe.Cifar,
        });
        Fuzz("model.ckpt", memory.ToArray(), bytes =>
        {
            using var stream = new MemoryStream(bytes);
            ModelCheckpoint.Load(stream).Network.Dispose();
        }, typeof(InvalidDataException));
        FuzzResealed("model.ckpt, checksum resealed", memory.ToArray(), CheckpointFormat.TrailerLength, ResealCheckpoint, bytes =>
        {
            using var stream = new MemoryStream(bytes);
            ModelCheckpoint.Load(stream).Network.Dispose();
        }, typeof(InvalidDataException));
    }

    // The checkpoint frame's trailer: its magic and the SHA-256 of every byte before it.
    private static byte[] ResealCheckpoint(byte[] file)
    {
        var body = file[..^CheckpointFormat.TrailerLength];
        return body.Concat(CheckpointFormat.TrailerMagic).Concat(System.Security.Cryptography.SHA256.HashData(body)).ToArray();
    }

    [TestMethod]
    [TestCategory("Slow")] // a few seconds of mutations per reader
    public void RunCheckpointReaderRestoresOrRefusesEveryMutation()
    {
        using var dir = new TestSupport.TempDir();
        using var train = TestSupport.SampleImages(0, 64);
        var path = Path.Combine(dir.Path, "run.ckpt");
        new Trainer(Tiny) { CheckpointPath = path }.Train(train, null);
        var trainer = new Trainer(Tiny);
        var plan = trainer.Prepare(10, 32);
        using var local = trainer.CreateLocalTrainer(10, 32);
        void Restore(byte[] bytes)
        {
            using var stream = new MemoryStream(bytes);
            TrainingCheckpoint.Restore(stream, plan, local);
        }
        Fuzz("run.ckpt", File.ReadAllBytes(path), Restore, typeof(InvalidDataException), typeof(InvalidOptionException));
        FuzzResealed("run.ckpt, checksum resealed", File.ReadAllBytes(path), CheckpointFormat.TrailerLength, ResealCheckpoint, Restore,
            typeof(InvalidDataException), typeof(InvalidOptionException));
    }

    [TestMethod]
    [TestCategory("Slow")] // a few seconds of mutations per reader
    public void MLNetModelReaderLoadsOrRefusesEveryMutation()
    {
        var mlContext = new MLContext(3);
        var data = mlContext.Data.LoadFromEnumerable(Samples.MLNet.ImageFolderSample.ListImages(ImageFolderFixture.Train));
        var model = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(Samples.MLNet.ImageRow.ImagePath)))
            .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
            {
                Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 64, Seed = 4,
            }))
            .Fit(data);
        using var memory = new MemoryStream();
        mlContext.Model.SaveManModel(model, data.Schema, memory);
        void Load(byte[] bytes)
        {
            using var stream = new MemoryStream(bytes);
            var loaded = new MLContext(1).Model.LoadManModel(stream, out _);
            foreach (var part in (IEnumerable<ITransformer>)loaded) (part as IDisposable)?.Dispose();
        }
        Fuzz("ML.NET model", memory.ToArray(), Load, typeof(InvalidDataException));
        // The checksum is the zip's comment, its last 64 characters: everything before them is mutated, then sealed again.
        FuzzResealed("ML.NET model, checksum resealed", memory.ToArray(), 64, bytes =>
        {
            var sealedZip = new MemoryStream();
            sealedZip.Write(bytes);
            try { ManModelOperations.Seal(sealedZip); }
            catch (InvalidOperationException) { } // the mutation hit the checksum's prefix: the input stays unsealed
            return sealedZip.ToArray();
        }, Load, typeof(InvalidDataException));
        // The entries are compressed, so the mutations above rarely reach them: here one entry's own bytes (man.json, the
        // backbone checkpoint, an embedded ML.NET zip) are mutated and the model zip is written and sealed again.
        var entries = ReadEntries(memory.ToArray());
        var names = entries.Keys.Order(StringComparer.Ordinal).ToArray();
        Fuzz("ML.NET model, one entry mutated and resealed", memory.ToArray(), random =>
        {
            string target = names[random.Next(names.Length)];
            return WriteSealedModel(entries.ToDictionary(e => e.Key, e => e.Key == target ? Mutate(e.Value, random) : e.Value));
        }, Load, new[] { typeof(InvalidDataException) });
    }

    private static Dictionary<string, byte[]> ReadEntries(byte[] zipBytes)
    {
        using var zip = new System.IO.Compression.ZipArchive(new MemoryStream(zipBytes));
        return zip.Entries.ToDictionary(e => e.FullName, e =>
        {
            using var s = e.Open();
            using var m = new MemoryStream();
            s.CopyTo(m);
            return m.ToArray();
        });
    }

    // A model zip as SaveManModel writes one: the entries, then the checksum comment, sealed.
    private static byte[] WriteSealedModel(Dictionary<string, byte[]> entries)
    {
        var memory = new MemoryStream();
        using (var zip = new System.IO.Compression.ZipArchive(memory, System.IO.Compression.ZipArchiveMode.Create, leaveOpen: true))
        {
            foreach (var (name, bytes) in entries)
                using (var s = zip.CreateEntry(name).Open()) s.Write(bytes);
            zip.Comment = "MANML-SHA256:" + new string('0', 64);
        }
        ManModelOperations.Seal(memory);
        return memory.ToArray();
    }

    [TestMethod]
    [TestCategory("Slow")] // a few seconds of mutations per reader
    public void WeightsReadersLoadOrRefuseEveryMutation()
    {
        using var dir = new TestSupport.TempDir();
        using var network = Architectures.Create("resnet8", 10, 32);
        foreach (var name in new[] { "weights.safetensors", "weights.pt" })
        {
            var path = Path.Combine(dir.Path, name);
            PyTorchWeights.Save(network, path);
            using var target = Architectures.Create("resnet8", 10, 32);
            Fuzz(name, File.ReadAllBytes(path), ThroughFile(name, p => PyTorchWeights.Load(target, p)),
                typeof(IncompatibleWeightsException));
        }
    }

    [TestMethod]
    [TestCategory("Slow")] // a few seconds of mutations per reader
    public void DatasetReadersLoadOrRefuseEveryMutation()
    {
        using var dir = new TestSupport.TempDir();
        var cifar = File.ReadAllBytes(TestSupport.BundledSample).AsSpan(0, 20 * CifarBinary.RecordBytes).ToArray();
        Fuzz("CIFAR batch", cifar, ThroughFile("data_batch_1.bin", p => CifarBinary.Read(new[] { p }).Dispose()),
            typeof(InvalidDataException));

        // STL-10: the image file and the label file, each mutated with the other intact.
        var stlPixels = new byte[2 * 3 * 96 * 96];
        new Random(7).NextBytes(stlPixels);
        byte[] stlLabels = { 1, 10 };
        Fuzz("STL-10 images", stlPixels, bytes => StlPair(dir.Path, bytes, stlLabels), typeof(InvalidDataException));
        Fuzz("STL-10 labels", stlLabels, bytes => StlPair(dir.Path, stlPixels, bytes), typeof(InvalidDataException));

        foreach (bool compress in new[] { false, true })
        {
            var mat = Path.Combine(dir.Path, "seed.mat");
            double[] y = { 10, 3, 1 };
            DatasetFormatTests.WriteMat(mat, compress,
                DatasetFormatTests.MatrixElement("X", new[] { 32, 32, 3, 3 }, 9, 2, DatasetFormatTests.SvhnPixels(3)),
                DatasetFormatTests.MatrixElement("y", new[] { 3, 1 }, 6, 9, y.SelectMany(BitConverter.GetBytes).ToArray()));
            Fuzz(compress ? "SVHN MAT-file (compressed)" : "SVHN MAT-file", File.ReadAllBytes(mat),
                ThroughFile("train_32x32.mat", p => SvhnMat.Read(p).Dispose()), typeof(InvalidDataException));
        }
    }

    private static void StlPair(string dir, byte[] pixels, byte[] labels)
    {
        File.WriteAllBytes(Path.Combine(dir, "train_X.bin"), pixels);
        File.WriteAllBytes(Path.Combine(dir, "train_y.bin"), labels);
        DatasetKind.Stl10.Read(new[] { Path.Combine(dir, "train_X.bin") }).Dispose();
    }

    [TestMethod]
    [TestCategory("Slow")] // a few seconds of mutations per reader
    public void ImageDecoderLoadsOrRefusesEveryMutation()
    {
        var transform = ImageNetTransform.ForCrop(32);
        var destination = new float[3 * 32 * 32];
        using var bitmap = new SKBitmap(new SKImageInfo(40, 24, SKColorType.Rgba8888, SKAlphaType.Opaque));
        for (int y = 0; y < 24; y++) for (int x = 0; x < 40; x++) bitmap.SetPixel(x, y, new SKColor((byte)(6 * x), (byte)(10 * y), (byte)(x ^ y)));
        foreach (var (format, name) in new[] { (SKEncodedImageFormat.Png, "image.png"), (SKEncodedImageFormat.Jpeg, "image.jpg") })
        {
            using var encoded = bitmap.Encode(format, 90);
            Fuzz(name, encoded.ToArray(), ThroughFile(name, p => transform.Load(p, new Random(1), destination)), typeof(InvalidDataException));
        }
    }
}
