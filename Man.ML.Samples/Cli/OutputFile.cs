// The command line's reports (metrics.json, bench.json, probe.json, ...) are written whole or not at all: to a
// temporary name beside the target, then renamed over it, so an interrupted run never leaves half a file.
namespace Man.ML.Samples.Cli;

internal static class OutputFile
{
    public static void WriteText(string path, string text)
    {
        var full = Path.GetFullPath(path);
        var temp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        try
        {
            File.WriteAllText(temp, text);
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            File.Delete(temp); // no-op once moved
        }
    }
}
