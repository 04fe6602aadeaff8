// Every file Man.ML writes (checkpoints, models, weights, ONNX graphs, reports) goes through a temporary name in the
// same folder and a rename, so a crash or a full disk never leaves a half-written file under the real name.
using System.Text;

namespace Man.ML;

/// <summary>Writes files through a temporary name in the same folder and a rename.</summary>
internal static class AtomicFile
{
    /// <summary>Writes <paramref name="path"/> with <paramref name="write"/>; the old file stays until the new one is complete.</summary>
    public static void Write(string path, Action<Stream> write)
    {
        var full = Path.GetFullPath(path);
        var temp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }

    /// <summary>Writes text atomically (UTF-8).</summary>
    public static void WriteText(string path, string text) =>
        Write(path, s => { var bytes = Encoding.UTF8.GetBytes(text); s.Write(bytes, 0, bytes.Length); });
}
