// The command line's reports (metrics.json, bench.json, probe.json, ...) are written whole or not at all: to a
// temporary name beside the target, then renamed over it, so an interrupted run never leaves half a file.
namespace Man.ML.Samples.Cli;

internal static class OutputFile
{
    public static void WriteText(string path, string text) => Write(path, s => s.Write(System.Text.Encoding.UTF8.GetBytes(text)));

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
            File.Delete(temp); // no-op once moved
        }
    }
}
