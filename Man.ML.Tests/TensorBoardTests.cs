using Man.ML.Training;

namespace Man.ML.Tests;

/// <summary>The event files TensorBoardLog writes, read back record by record as TensorBoard reads them.</summary>
[TestClass]
public sealed class TensorBoardTests
{
    // CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), written here independently of TorchSharp's, and TFRecord's mask.
    private static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (var b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? (crc >> 1) ^ 0x82F63B78 : crc >> 1;
        }
        return ~crc;
    }

    private static uint Masked(ReadOnlySpan<byte> data)
    {
        uint c = Crc32C(data);
        return ((c >> 15) | (c << 17)) + 0xa282ead8U;
    }

    // TFRecord framing: length (uint64), masked CRC of the length, the record, masked CRC of the record; each CRC checked.
    private static List<Tensorboard.Event> ReadEvents(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var events = new List<Tensorboard.Event>();
        int at = 0;
        while (at < bytes.Length)
        {
            Assert.IsTrue(bytes.Length - at >= 12, $"a record header is cut short at byte {at}");
            var header = bytes.AsSpan(at, 8);
            long length = BitConverter.ToInt64(header);
            Assert.AreEqual(Masked(header), BitConverter.ToUInt32(bytes, at + 8), $"length CRC at byte {at}");
            Assert.IsTrue(at + 12 + length + 4 <= bytes.Length, $"a record is cut short at byte {at}");
            var data = bytes.AsSpan(at + 12, (int)length);
            Assert.AreEqual(Masked(data), BitConverter.ToUInt32(bytes, at + 12 + (int)length), $"record CRC at byte {at}");
            events.Add(Tensorboard.Event.Parser.ParseFrom(data.ToArray()));
            at += 12 + (int)length + 4;
        }
        return events;
    }

    [TestMethod]
    public void EachEpochsFiguresAreWrittenAsScalarsTensorBoardReads()
    {
        var dir = Path.Combine(Path.GetTempPath(), "manml-tb-" + Guid.NewGuid().ToString("N"));
        try
        {
            var log = new TensorBoardLog(dir);
            var epochs = new[]
            {
                new EpochMetrics { Epoch = 1, TrainLoss = 2.25, TrainAccuracy = 0.125, ValLoss = 2.5, ValAccuracy = 0.25, ValTop5Accuracy = 0.75,
                    Lr = 0.1, Seconds = 3, SegmentLosses = new[] { 2.0, 1.5 } },
                new EpochMetrics { Epoch = 2, TrainLoss = 1.75, TrainAccuracy = 0.375, Lr = 0.05, Seconds = 2.5, SegmentLosses = new[] { 1.25, 1.0 } },
            };
            foreach (var m in epochs) log.Write(m);
            var file = Directory.GetFiles(dir, "events.out.tfevents.*").Single();
            var events = ReadEvents(file);
            Assert.AreEqual("brain.Event:2", events[0].FileVersion, "TensorBoard needs the version record first");
            var scalars = events.Skip(1).SelectMany(e => e.Summary.Value.Select(v => (e.Step, v.Tag, v.SimpleValue, e.WallTime))).ToList();
            float At(long step, string tag) => scalars.Single(s => s.Step == step && s.Tag == tag).SimpleValue;
            Assert.AreEqual(2.25f, At(1, "loss/train"));
            Assert.AreEqual(0.25f, At(1, "accuracy/validation"));
            Assert.AreEqual(0.75f, At(1, "accuracy/validation_top5"));
            Assert.AreEqual(2.5f, At(1, "loss/validation"));
            Assert.AreEqual(1.5f, At(1, "local_loss/segment_01"));
            Assert.AreEqual(0.05f, At(2, "learning_rate"));
            Assert.AreEqual(1.25f, At(2, "local_loss/segment_00"));
            Assert.AreEqual(0.375f, At(2, "accuracy/train"));
            Assert.IsFalse(scalars.Any(s => s.Step == 2 && s.Tag.EndsWith("validation")), "epoch 2 had no validation figures");
            Assert.AreEqual(9 + 6, scalars.Count);
            var now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            Assert.IsTrue(scalars.All(s => Math.Abs(s.WallTime - now) < 600), "wall times are Unix seconds");
        }
        finally
        {
            if (Directory.Exists(dir)) Directory.Delete(dir, true);
        }
    }

    [TestMethod]
    public void ManmlTrainWritesTheCurvesOfMetricsJsonIntoTheTensorBoardFolder()
    {
        var outDir = TestSupport.NewTempFolder();
        var logs = Path.Combine(outDir, "tb");
        var r = TestSupport.RunManml(new[]
        {
            "train", "--data", TestSupport.BundledSample, "--train-limit", "64", "--val-split", "32", "--arch", "resnet8", "--k", "2",
            "--epochs", "2", "--batch-size", "32", "--seed", "1", "--out", outDir, "--tensorboard", logs,
        });
        Assert.AreEqual(0, r.ExitCode, r.Stderr + r.Stdout);
        using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "metrics.json")));
        var epochs = json.RootElement.GetProperty("epochs");
        var scalars = ReadEvents(Directory.GetFiles(logs, "events.out.tfevents.*").Single()).Skip(1)
            .SelectMany(e => e.Summary.Value.Select(v => (e.Step, v.Tag, v.SimpleValue))).ToList();
        for (int epoch = 1; epoch <= 2; epoch++)
        {
            var m = epochs[epoch - 1];
            float At(string tag) => scalars.Single(s => s.Step == epoch && s.Tag == tag).SimpleValue;
            Assert.AreEqual((float)m.GetProperty("train_loss").GetDouble(), At("loss/train"));
            Assert.AreEqual((float)m.GetProperty("val_accuracy").GetDouble(), At("accuracy/validation"));
            Assert.AreEqual((float)m.GetProperty("lr").GetDouble(), At("learning_rate"));
            Assert.AreEqual(2, scalars.Count(s => s.Step == epoch && s.Tag.StartsWith("local_loss/")), "one local loss per segment (K = 2)");
        }
    }

    [TestMethod]
    public void AFolderThatCannotBeMadeIsOneIOException()
    {
        var file = Path.GetTempFileName();
        try
        {
            var e = Assert.ThrowsExactly<IOException>(() => new TensorBoardLog(Path.Combine(file, "logs")));
            StringAssert.Contains(e.Message, "Cannot write TensorBoard logs into");
        }
        finally { File.Delete(file); }
    }
}
