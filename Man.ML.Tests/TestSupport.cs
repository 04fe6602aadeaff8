using System.Diagnostics;

[assembly: DoNotParallelize] // libtorch already uses every core

namespace Man.ML.Tests;

/// <summary>Paths and child processes shared by the tests.</summary>
internal static class TestSupport
{
    public static string RepositoryRoot
    {
        get
        {
            var dir = new DirectoryInfo(AppContext.BaseDirectory);
            while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Man.sln"))) dir = dir.Parent;
            return dir?.FullName ?? throw new InvalidOperationException("Man.sln not found above the test folder.");
        }
    }

    public static string BundledSample => Path.Combine(RepositoryRoot, "Man.ML.Samples", "data", "cifar10-sample", "cifar10_sample.bin");

    /// <summary>Images <paramref name="start"/> to <paramref name="start"/> + <paramref name="count"/> of the bundled CIFAR-10 sample.</summary>
    public static Man.ML.Data.LabeledImages SampleImages(int start, int count)
    {
        using var all = Man.ML.Data.CifarBinary.Read(new[] { BundledSample });
        return all.Slice(start, count);
    }

    /// <summary>The manml program built beside the tests (the test project references Man.ML.Samples).</summary>
    public static string ManmlDll => Path.Combine(AppContext.BaseDirectory, "manml.dll");

    public static string NewTempFolder()
    {
        var dir = Path.Combine(Path.GetTempPath(), "manml-tests-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    public sealed record ProcessResult(int ExitCode, string Stdout, string Stderr);

    /// <summary>Runs manml in a child process.</summary>
    public static ProcessResult RunManml(IEnumerable<string> args, IDictionary<string, string>? environment = null, int timeoutSeconds = 300)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(ManmlDll);
        foreach (var a in args) info.ArgumentList.Add(a);
        if (environment is not null) foreach (var (k, v) in environment) info.Environment[k] = v;
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeoutSeconds * 1000))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"manml {string.Join(' ', args)} did not finish in {timeoutSeconds} s.");
        }
        return new ProcessResult(process.ExitCode, stdout.Result, stderr.Result);
    }
}
