using System.IO.Compression;
using Man.ML.Data;

namespace Man.ML.Tests;

[TestClass]
public sealed class DatasetFormatTests
{
    private string folder = "";

    [TestInitialize]
    public void CreateFolder() => folder = TestSupport.NewTempFolder();

    [TestCleanup]
    public void DeleteFolder() => Directory.Delete(folder, true);

    // A minimal MATLAB v5 writer, written from the format's description: header, then one miMATRIX element per array.
    internal static byte[] MatrixElement(string name, int[] dims, int classCode, int dataType, byte[] data)
    {
        using var body = new MemoryStream();
        using var w = new BinaryWriter(body);
        void Padded(byte[] bytes) { w.Write(bytes); w.Write(new byte[(8 - bytes.Length % 8) % 8]); }
        w.Write(6); w.Write(8); w.Write(classCode); w.Write(0);               // array flags (miUINT32, 8 bytes)
        w.Write(5); w.Write(4 * dims.Length); Padded(dims.SelectMany(BitConverter.GetBytes).ToArray()); // dimensions (miINT32)
        var nameBytes = System.Text.Encoding.ASCII.GetBytes(name);
        if (nameBytes.Length <= 4) // small element
        {
            w.Write((uint)(nameBytes.Length << 16 | 1)); w.Write(nameBytes); w.Write(new byte[4 - nameBytes.Length]);
        }
        else { w.Write(1); w.Write(nameBytes.Length); Padded(nameBytes); }
        w.Write(dataType); w.Write(data.Length); Padded(data);
        w.Flush();
        var content = body.ToArray();
        using var element = new MemoryStream();
        using var e = new BinaryWriter(element);
        e.Write(14); e.Write(content.Length); e.Write(content);
        return element.ToArray();
    }

    internal static void WriteMat(string path, bool compress, params byte[][] elements)
    {
        using var file = File.Create(path);
        var header = new byte[128];
        System.Text.Encoding.ASCII.GetBytes("MATLAB 5.0 MAT-file, written by Man.ML tests").CopyTo(header, 0);
        header[124] = 0x00; header[125] = 0x01; header[126] = (byte)'I'; header[127] = (byte)'M';
        file.Write(header);
        foreach (var element in elements)
        {
            if (!compress) { file.Write(element); continue; }
            using var z = new MemoryStream();
            using (var zs = new ZLibStream(z, CompressionLevel.Fastest, leaveOpen: true)) zs.Write(element);
            var packed = z.ToArray();
            file.Write(BitConverter.GetBytes(15)); file.Write(BitConverter.GetBytes(packed.Length)); file.Write(packed);
        }
    }

    // X is 32×32×3×N column-major: value at (r, c, ch, i) = (r + 2c + 5ch + 7i) mod 256.
    internal static byte[] SvhnPixels(int n)
    {
        var x = new byte[32 * 32 * 3 * n];
        for (int i = 0; i < n; i++) for (int ch = 0; ch < 3; ch++) for (int c = 0; c < 32; c++) for (int r = 0; r < 32; r++)
            x[r + 32 * c + 1024 * ch + 3072 * i] = (byte)((r + 2 * c + 5 * ch + 7 * i) % 256);
        return x;
    }

    [TestMethod]
    public void SvhnMatFilesAreReadCompressedOrNot()
    {
        foreach (bool compress in new[] { false, true })
        {
            var path = Path.Combine(folder, $"svhn-{compress}.mat");
            double[] y = { 10, 3, 1 };
            WriteMat(path, compress,
                MatrixElement("X", new[] { 32, 32, 3, 3 }, 9, 2, SvhnPixels(3)),               // mxUINT8_CLASS, miUINT8
                MatrixElement("y", new[] { 3, 1 }, 6, 9, y.SelectMany(BitConverter.GetBytes).ToArray())); // mxDOUBLE_CLASS, miDOUBLE
            using var data = SvhnMat.Read(path);
            Assert.AreEqual(3, data.Count);
            CollectionAssert.AreEqual(new long[] { 0, 3, 1 }, data.Labels.data<long>().ToArray(), "label 10 is the digit 0");
            CollectionAssert.AreEqual(new long[] { 3, 3, 32, 32 }, data.Images.shape);
            // Image 2, channel 1, row 4, column 9.
            Assert.AreEqual((byte)((4 + 18 + 5 + 14) % 256), data.Images[2, 1, 4, 9].item<byte>());
        }
    }

    [TestMethod]
    public void MalformedSvhnFilesAreClearErrors()
    {
        var missingY = Path.Combine(folder, "x-only.mat");
        WriteMat(missingY, false, MatrixElement("X", new[] { 32, 32, 3, 1 }, 9, 2, SvhnPixels(1)));
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => SvhnMat.Read(missingY)).Message, "X and y");
        var badLabel = Path.Combine(folder, "bad-label.mat");
        WriteMat(badLabel, false, MatrixElement("X", new[] { 32, 32, 3, 1 }, 9, 2, SvhnPixels(1)),
            MatrixElement("y", new[] { 1, 1 }, 6, 9, BitConverter.GetBytes(11.0)));
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => SvhnMat.Read(badLabel)).Message, "record 0: label 11");
        var truncated = Path.Combine(folder, "cut.mat");
        File.WriteAllBytes(truncated, File.ReadAllBytes(badLabel)[..300]);
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => SvhnMat.Read(truncated)).Message, "truncated");
        var notMat = Path.Combine(folder, "not.mat");
        File.WriteAllText(notMat, new string('x', 200));
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => SvhnMat.Read(notMat)).Message, "not a little-endian MATLAB v5");
    }

    [TestMethod]
    public void Stl10BinaryFilesAreTransposedFromColumnMajor()
    {
        const int side = 96, n = 2;
        var x = new byte[n * 3 * side * side];
        // Stored per image and channel column-major: byte (i, ch, c, r) is pixel (row r, column c) = (3r + c + 11ch + 50i) mod 256.
        for (int i = 0; i < n; i++) for (int ch = 0; ch < 3; ch++) for (int c = 0; c < side; c++) for (int r = 0; r < side; r++)
            x[((i * 3 + ch) * side + c) * side + r] = (byte)((3 * r + c + 11 * ch + 50 * i) % 256);
        File.WriteAllBytes(Path.Combine(folder, "train_X.bin"), x);
        File.WriteAllBytes(Path.Combine(folder, "train_y.bin"), new byte[] { 1, 10 });
        using var data = Stl10Binary.Read(folder);
        CollectionAssert.AreEqual(new long[] { 2, 3, 96, 96 }, data.Images.shape);
        CollectionAssert.AreEqual(new long[] { 0, 9 }, data.Labels.data<long>().ToArray());
        Assert.AreEqual((byte)((3 * 5 + 40 + 22 + 50) % 256), data.Images[1, 2, 5, 40].item<byte>());

        File.WriteAllBytes(Path.Combine(folder, "test_X.bin"), x[..^10]);
        File.WriteAllBytes(Path.Combine(folder, "test_y.bin"), new byte[] { 1, 2 });
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => Stl10Binary.Read(Path.Combine(folder, "test_X.bin"))).Message, "truncated");
        File.WriteAllBytes(Path.Combine(folder, "test_X.bin"), x);
        File.WriteAllBytes(Path.Combine(folder, "test_y.bin"), new byte[] { 1, 0 });
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => Stl10Binary.Read(Path.Combine(folder, "test_X.bin"))).Message,
            "record 1: label 0");
        File.WriteAllBytes(Path.Combine(folder, "test_y.bin"), new byte[] { 1 });
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => Stl10Binary.Read(Path.Combine(folder, "test_X.bin"))).Message, "disagree");
    }
}
