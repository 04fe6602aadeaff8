// The running program starting itself as a child process (manml doctor's isolated checks; manml-lab bench's
// measurements), whether it runs as `dotnet manml.dll` or as its own executable. The program is the entry assembly, so
// manml-lab, which shares this code, starts manml-lab.
using System.Diagnostics;

namespace Man.ML.Samples.Cli;

internal static class SelfProcess
{
    /// <summary>How to start this program again with <paramref name="args"/>, output redirected.</summary>
    public static ProcessStartInfo StartInfo(IEnumerable<string> args)
    {
        var self = Environment.ProcessPath!;
        var info = new ProcessStartInfo(self) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") info.ArgumentList.Add(System.Reflection.Assembly.GetEntryAssembly()!.Location);
        foreach (var a in args) info.ArgumentList.Add(a);
        return info;
    }
}
