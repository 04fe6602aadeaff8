// Commands that write into an output folder hold it for their run (Man.ML's OutputFolder: one run at a time, leftover
// temporary files of killed writes removed) and take back what they created there when they fail.
using System.CommandLine;

namespace Man.ML.Samples.Cli;

internal static class OutputFolders
{
    /// <summary>Runs <paramref name="body"/> with <paramref name="folder"/> (named by <paramref name="option"/>) locked;
    /// when it fails, what this run created in the folder (or the folder itself) is removed again.</summary>
    public static int Write(ParseResult parse, string folder, string option, Func<int> body)
    {
        using var locked = OutputFolder.Acquire(folder, option, CliErrors.CommandLine(parse));
        try { return body(); }
        catch
        {
            locked.RemoveCreated();
            throw;
        }
    }
}
