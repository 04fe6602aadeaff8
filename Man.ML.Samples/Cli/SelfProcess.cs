// manml starting itself as a child process (bench's measurements, doctor's isolated checks), whether it runs as
// `dotnet manml.dll` or as its own executable.
using System.Diagnostics;

namespace Man.ML.Samples.Cli;

internal static class SelfProcess
{
    /// <summary>How to start this program again with <paramref name="args"/>, output redirected.</summary>
    public static ProcessStartInfo StartInfo(IEnumerable<string> args)
    {
        var self = Environment.ProcessPath!;
        var info = new ProcessStartInfo(self) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") info.ArgumentList.Add(typeof(SelfProcess).Assembly.Location);
        foreach (var a in args) info.ArgumentList.Add(a);
        return info;
    }
}
