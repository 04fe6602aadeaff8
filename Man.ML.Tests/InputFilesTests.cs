using System.Diagnostics;
using Man.ML.Interop;
using Man.ML.Training;

namespace Man.ML.Tests;

[TestClass]
public sealed class InputFilesTests
{
    private static string MakeFifo(string dir)
    {
        var path = Path.Combine(dir, "model.ckpt");
        using var mkfifo = Process.Start(new ProcessStartInfo("mkfifo", path) { UseShellExecute = false })!;
        mkfifo.WaitForExit();
        Assert.AreEqual(0, mkfifo.ExitCode, "mkfifo (coreutils) is needed to make the FIFO this test reads");
        return path;
    }

    [TestMethod]
    public void AFifoGivenAsAnyFileIsRefusedAtOnceNamingIt()
    {
        using var dir = new TestSupport.TempDir();
        var fifo = MakeFifo(dir.Path);
        // Opening a FIFO for reading blocks until a writer comes: each reader must refuse before it opens the file.
        foreach (var (name, read) in new (string, Action)[]
        {
            ("model checkpoint", () => ModelCheckpoint.Load(fifo)),
            ("weights", () => PyTorchWeights.Load(Models.Architectures.Create("resnet8", 10, 32), fifo)),
            ("CIFAR batch", () => Data.CifarBinary.Read(new[] { fifo })),
            ("MAT-file", () => Data.MatFile.Read(fifo)),
        })
        {
            var task = Task.Run(read);
            Task.WhenAny(task, Task.Delay(TimeSpan.FromSeconds(20))).Wait();
            Assert.IsTrue(task.IsCompleted, $"the {name} reader blocked on a FIFO");
            Assert.IsTrue(task.IsFaulted, $"the {name} reader accepted a FIFO");
            var e = task.Exception!.InnerException!;
            Assert.IsInstanceOfType<IOException>(e, $"{name}: {e}");
            StringAssert.Contains(e.Message, fifo);
            StringAssert.Contains(e.Message, "FIFO");
        }
    }

    [TestMethod]
    public void AFolderOrAMissingPathIsNamed()
    {
        using var dir = new TestSupport.TempDir();
        var e = Assert.ThrowsExactly<IOException>(() => ModelCheckpoint.Load(dir.Path));
        StringAssert.Contains(e.Message, "is a folder");
        var missing = Path.Combine(dir.Path, "none.ckpt");
        var f = Assert.ThrowsExactly<FileNotFoundException>(() => ModelCheckpoint.Load(missing));
        StringAssert.Contains(f.Message, missing);
    }

    [TestMethod]
    public void ABoundedReadRefusesALargerFileBeforeReadingIt()
    {
        using var dir = new TestSupport.TempDir();
        var path = Path.Combine(dir.Path, "data.bin");
        File.WriteAllBytes(path, new byte[1000]);
        Assert.AreEqual(1000, InputFiles.ReadAllBytes(path, "Data file", 1000).Length);
        var e = Assert.ThrowsExactly<InvalidDataException>(() => InputFiles.ReadAllBytes(path, "Data file", 999));
        StringAssert.Contains(e.Message, path);
        StringAssert.Contains(e.Message, "999");
    }
}
