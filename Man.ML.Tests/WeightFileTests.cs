using System.IO.Compression;
using System.Text;
using Man.ML.Interop;
using Man.ML.Models;

namespace Man.ML.Tests;

/// <summary>
/// Weights files are checked against themselves before PyBridge allocates what they declare: hostile safetensors
/// headers and torch.save pickles are one line naming the file and the key, never a libtorch backtrace or the pickle
/// library's advice. The files are written byte by byte here (no Python needed).
/// </summary>
[TestClass]
public sealed class WeightFileTests
{
    private static string Write(TestSupport.TempDir dir, string name, byte[] bytes)
    {
        var path = Path.Combine(dir.Path, name);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static byte[] Safetensors(string header, int dataBytes)
    {
        var json = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + json.Length + dataBytes];
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), (ulong)json.Length);
        json.CopyTo(bytes, 8);
        return bytes;
    }

    private static void AssertOneCleanLine(Exception e, string file, string expected)
    {
        foreach (var part in new[] { $"Weights file '{file}'", expected })
            if (!e.Message.Contains(part, StringComparison.Ordinal)) Assert.Fail($"expected '{part}' in: {e.Message}");
        Assert.IsFalse(e.Message.Contains('\n'), "one line: " + e.Message);
        foreach (var foreign in new[] { "Exception raised from", "frame #", "IObjectConstructor", "System." })
            Assert.IsFalse(e.Message.Contains(foreign, StringComparison.Ordinal), $"'{foreign}' reached the message: {e.Message}");
    }

    [TestMethod]
    public void HostileSafetensorsHeadersAreRefusedBeforeAnythingIsAllocated()
    {
        using var dir = new TestSupport.TempDir();
        using var network = new CifarResNet(8, 10);
        const long Huge = 1L << 31;
        foreach (var (name, bytes, expected) in new (string, byte[], string)[]
        {
            ("huge.safetensors", Safetensors($$$"""{"fc.weight":{"dtype":"F32","shape":[{{{Huge}}},{{{Huge}}},{{{Huge}}}],"data_offsets":[0,4]}}""", 4),
                $"key 'fc.weight' has shape ({Huge}, {Huge}, {Huge}), larger than the 2,147,483,647 bytes Man.ML reads for one tensor"),
            ("outside.safetensors", Safetensors("""{"fc.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8000]}}""", 8),
                "key 'fc.weight' has data_offsets [0,8000] outside the file's 8 bytes of tensor data"),
            ("short.safetensors", Safetensors("""{"fc.weight":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}""", 8),
                "key 'fc.weight': shape (4) of F32 takes 16 bytes, but its data_offsets [0,8] hold 8"),
            ("negative.safetensors", Safetensors("""{"fc.weight":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", 4),
                "key 'fc.weight' has shape [-1], which is not a list of sizes"),
            ("dtype.safetensors", Safetensors("""{"fc.weight":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}}""", 1),
                "key 'fc.weight' has dtype 'F8_E4M3', which Man.ML does not read"),
            ("long.safetensors", BitConverter.GetBytes(5UL).Concat(Encoding.ASCII.GetBytes("{}")).ToArray(),
                "declares a safetensors header of 5 bytes; the file has 10 bytes"),
        })
        {
            var path = Write(dir, name, bytes);
            var e = Assert.ThrowsExactly<IncompatibleWeightsException>(() => PyTorchWeights.Load(network, path), name);
            AssertOneCleanLine(e, name, expected);
        }
    }

    // Pickle opcodes (protocol 2), written as torch.save writes a state dict.
    private sealed class Pickle
    {
        private readonly MemoryStream code = new();

        public Pickle Op(char op) { code.WriteByte((byte)op); return this; }
        public Pickle Op(byte op) { code.WriteByte(op); return this; }
        public Pickle Global(string module, string name) => Op('c').Raw($"{module}\n{name}\n");
        public Pickle Text(string text)
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            Op('X');
            code.Write(BitConverter.GetBytes(bytes.Length));
            code.Write(bytes);
            return this;
        }
        public Pickle Int(int value)
        {
            Op('J');
            code.Write(BitConverter.GetBytes(value));
            return this;
        }
        private Pickle Raw(string text) { code.Write(Encoding.ASCII.GetBytes(text)); return this; }
        public byte[] Bytes => code.ToArray();
    }

    // A torch.save zip: archive/data.pkl and archive/data/0 of 'stored' bytes.
    private static byte[] TorchZip(byte[] pickle, int stored)
    {
        var zip = new MemoryStream();
        using (var archive = new ZipArchive(zip, ZipArchiveMode.Create, leaveOpen: true))
        {
            using (var s = archive.CreateEntry("archive/data.pkl", CompressionLevel.NoCompression).Open()) s.Write(pickle);
            using (var s = archive.CreateEntry("archive/data/0", CompressionLevel.NoCompression).Open()) s.Write(new byte[stored]);
        }
        return zip.ToArray();
    }

    // A state dict of one tensor 'fc.weight' of the given shape and stride over a FloatStorage of 'elements' elements (data/0).
    private static byte[] OneTensor(int elements, int[] shape, int[] stride)
    {
        var p = new Pickle().Op(0x80).Op(2).Global("collections", "OrderedDict").Op(')').Op('R').Op('(')
            .Text("fc.weight").Global("torch._utils", "_rebuild_tensor_v2").Op('(')
            .Op('(').Text("storage").Global("torch", "FloatStorage").Text("0").Text("cpu").Int(elements).Op('t').Op('Q')
            .Int(0).Op('(');
        foreach (var d in shape) p.Int(d);
        p.Op('t').Op('(');
        foreach (var s in stride) p.Int(s);
        return p.Op('t').Op(0x89).Global("collections", "OrderedDict").Op(')').Op('R').Op('t').Op('R').Op('u').Op('.').Bytes;
    }

    [TestMethod]
    public void HostileTorchSaveFilesAreRefusedBeforeTheyAreUnpickled()
    {
        using var dir = new TestSupport.TempDir();
        using var network = new CifarResNet(8, 10);
        // A pickle that would run a shell command in Python (os.system('echo hi')).
        var system = new Pickle().Op(0x80).Op(2).Global("os", "system").Text("echo hi").Op(0x85).Op('R').Op('.').Bytes;
        foreach (var (name, bytes, expected) in new (string, byte[], string)[]
        {
            ("system.pt", TorchZip(system, 0),
                "holds 'os.system', not only tensors: a Python object Man.ML refuses to unpickle; " +
                "save the weights with torch.save(model.state_dict(), f), or as safetensors."),
            ("huge.pt", TorchZip(OneTensor(4, new[] { 100_000, 100_000 }, new[] { 100_000, 1 }), 16),
                "'huge.pt': key 'fc.weight' has shape (100000, 100000), larger than the 2,147,483,647 bytes Man.ML reads for one tensor."),
            ("view.pt", TorchZip(OneTensor(4, new[] { 1000, 1000 }, new[] { 1000, 1 }), 16),
                "key 'fc.weight' has shape (1000, 1000) and stride (1000, 1) from offset 0, reaching element 999,999 of a storage of 4"),
            ("overflow.pt", TorchZip(OneTensor(4, new[] { int.MaxValue, int.MaxValue, int.MaxValue }, new[] { 1, 1, 1 }), 16),
                $"key 'fc.weight' has shape ({int.MaxValue}, {int.MaxValue}, {int.MaxValue}), larger than the 2,147,483,647 bytes"),
            ("storage.pt", TorchZip(OneTensor(1_000_000, new[] { 2 }, new[] { 1 }), 16),
                "key 'fc.weight' declares 1,000,000 elements of FloatStorage (4,000,000 bytes), but data/0 holds 16 bytes"),
        })
        {
            var path = Write(dir, name, bytes);
            var e = Assert.ThrowsExactly<IncompatibleWeightsException>(() => PyTorchWeights.Load(network, path), name);
            AssertOneCleanLine(e, name, expected);
        }

        // A well-formed tensor passes the check, is unpickled, and reaches the comparison of keys.
        var fine = Write(dir, "fine.pt", TorchZip(OneTensor(4, new[] { 2, 2 }, new[] { 2, 1 }), 16));
        var f = Assert.ThrowsExactly<IncompatibleWeightsException>(() => PyTorchWeights.Load(network, fine));
        AssertOneCleanLine(f, "fine.pt", "has no key 'conv1.weight' (16, 3, 3, 3), which resnet8 needs");
    }

    [TestMethod]
    public void ALibTorchBacktraceNeverReachesTheMessage()
    {
        const string Raised = "Trying to create tensor with negative dimension -2147483648: [-2147483648]\n" +
            "Exception raised from check_size_nonnegative at ../aten/src/ATen/EmptyTensor.h:21 (most recent call first):\n" +
            "frame #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x7b (0x7f in libc10.so)\n";
        Assert.AreEqual("Trying to create tensor with negative dimension -2147483648: [-2147483648]", PyTorchWeights.OneLine(Raised));
    }
}
