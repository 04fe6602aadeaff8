using Man.ML.Data;

namespace Man.ML.Tests;

[TestClass]
public sealed class CifarBinaryTests
{
    private string folder = "";

    [TestInitialize]
    public void CreateFolder() => folder = TestSupport.NewTempFolder();

    [TestCleanup]
    public void DeleteFolder() => Directory.Delete(folder, recursive: true);

    // Record r: label r % 10, pixel p of channel c = (r + 3c + p) mod 256.
    private string WriteRecords(string name, int count, int firstRecord = 0)
    {
        var labels = new byte[count];
        var pixels = new byte[count * CifarBinary.PixelBytes];
        for (int r = 0; r < count; r++)
        {
            labels[r] = (byte)((firstRecord + r) % 10);
            for (int i = 0; i < CifarBinary.PixelBytes; i++)
                pixels[r * CifarBinary.PixelBytes + i] = (byte)((firstRecord + r + 3 * (i / 1024) + i % 1024) % 256);
        }
        var path = Path.Combine(folder, name);
        CifarBinary.Write(path, pixels, labels);
        return path;
    }

    [TestMethod]
    public void ReadsRecordsInTheOfficialLayout()
    {
        var path = WriteRecords("a.bin", 7);
        Assert.AreEqual(7L * 3073, new FileInfo(path).Length);
        using var data = CifarBinary.Read(new[] { path });
        Assert.AreEqual(7, data.Count);
        CollectionAssert.AreEqual(new long[] { 7, 3, 32, 32 }, data.Images.shape);
        CollectionAssert.AreEqual(new long[] { 0, 1, 2, 3, 4, 5, 6 }, data.Labels.data<long>().ToArray());
        // Record 5, channel 2 (blue), row 4, column 9: pixel index 4*32+9 = 137 within the channel.
        Assert.AreEqual((byte)((5 + 6 + 137) % 256), data.Images[5, 2, 4, 9].item<byte>());
        CollectionAssert.AreEqual(CifarBinary.DefaultClassNames.ToArray(), data.ClassNames.ToArray());
    }

    [TestMethod]
    public void ReadsAnyNumberOfFilesAndFoldersPreferringTrainingBatches()
    {
        WriteRecords("data_batch_1.bin", 3);
        WriteRecords("data_batch_2.bin", 2, firstRecord: 3);
        WriteRecords("test_batch.bin", 4);
        using var data = CifarBinary.Read(new[] { folder });
        Assert.AreEqual(5, data.Count, "test_batch.bin must not be mixed into a folder's training batches");
        CollectionAssert.AreEqual(new long[] { 0, 1, 2, 3, 4 }, data.Labels.data<long>().ToArray());
        using var both = CifarBinary.Read(new[] { Path.Combine(folder, "test_batch.bin"), Path.Combine(folder, "data_batch_2.bin") });
        Assert.AreEqual(6, both.Count);
    }

    [TestMethod]
    public void AnEmptyFileIsAnErrorNamingIt()
    {
        var path = Path.Combine(folder, "empty.bin");
        File.WriteAllBytes(path, Array.Empty<byte>());
        var e = Assert.ThrowsExactly<InvalidDataException>(() => CifarBinary.Read(new[] { path }));
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "empty");
    }

    [TestMethod]
    public void ATruncatedFileIsAnErrorNamingFileAndRecord()
    {
        var path = WriteRecords("cut.bin", 3);
        using (var s = new FileStream(path, FileMode.Open)) s.SetLength(3 * 3073 - 100);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => CifarBinary.Read(new[] { path }));
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "record 2");
    }

    [TestMethod]
    public void ALabelOutsideZeroToNineIsAnErrorNamingFileAndRecord()
    {
        var path = WriteRecords("bad.bin", 4);
        var bytes = File.ReadAllBytes(path);
        bytes[2 * 3073] = 10;
        File.WriteAllBytes(path, bytes);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => CifarBinary.Read(new[] { path }));
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "record 2");
        StringAssert.Contains(e.Message, "label 10");
    }

    [TestMethod]
    public void AMissingPathIsAnErrorNamingIt()
    {
        var missing = Path.Combine(folder, "nope.bin");
        var e = Assert.ThrowsExactly<FileNotFoundException>(() => CifarBinary.Read(new[] { missing }));
        StringAssert.Contains(e.Message, missing);
    }

    [TestMethod]
    public void TheBundledSampleReadsWithItsClassNames()
    {
        using var data = CifarBinary.Read(new[] { TestSupport.BundledSample });
        Assert.AreEqual(6000, data.Count);
        Assert.AreEqual("airplane", data.ClassNames[0]);
        // Roughly class-balanced: every class has between 5% and 15% of the images.
        var counts = data.Labels.bincount(null).data<long>().ToArray();
        Assert.AreEqual(10, counts.Length);
        Assert.IsTrue(counts.All(c => c is > 300 and < 900), string.Join(",", counts));
    }
}
