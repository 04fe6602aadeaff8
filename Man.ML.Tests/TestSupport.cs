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

    /// <summary>A fresh temporary folder, deleted with everything in it on Dispose.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = NewTempFolder();

        public void Dispose()
        {
            try { Directory.Delete(Path, recursive: true); }
            catch (IOException) { } // a file still held by a child process: the temp folder is cleaned by the system
        }
    }

    public sealed record ProcessResult(int ExitCode, string Stdout, string Stderr);

    /// <summary>Runs manml in a child process.</summary>
    public static ProcessResult RunManml(IEnumerable<string> args, IDictionary<string, string>? environment = null, int timeoutSeconds = 300) =>
        Run("dotnet", args.Prepend(ManmlDll), environment: environment, timeoutSeconds: timeoutSeconds);

    /// <summary>manml-lab, the laboratory's tools, in its own build output (the test project builds it, not references it).</summary>
    public static string LabDll => Path.Combine(RepositoryRoot, "Man.ML.Lab", "bin", Configuration, "net10.0", "manml-lab.dll");

    /// <summary>Runs manml-lab in a child process.</summary>
    public static ProcessResult RunLab(IEnumerable<string> args, IDictionary<string, string>? environment = null, int timeoutSeconds = 300) =>
        Run("dotnet", args.Prepend(LabDll), environment: environment, timeoutSeconds: timeoutSeconds);

    /// <summary>The build configuration these tests were compiled in (the one `dotnet test -c ...` built).</summary>
#if DEBUG
    public const string Configuration = "Debug";
#else
    public const string Configuration = "Release";
#endif

    /// <summary>Runs a program in a child process and collects its output; fails the test when it outlives the timeout.</summary>
    /// <remarks>MSBuild's variables from the `dotnet test` that started this process are not passed on, so a child
    /// `dotnet build` or `dotnet pack` evaluates its project as it would from a shell.</remarks>
    public static ProcessResult Run(string program, IEnumerable<string> args, string? workingDirectory = null,
        IDictionary<string, string>? environment = null, int timeoutSeconds = 300)
    {
        var info = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) info.ArgumentList.Add(a);
        if (workingDirectory is not null) info.WorkingDirectory = workingDirectory;
        foreach (var key in info.Environment.Keys.Where(k => k.StartsWith("MSBuild", StringComparison.OrdinalIgnoreCase)).ToList())
            info.Environment.Remove(key);
        if (environment is not null) foreach (var (k, v) in environment) info.Environment[k] = v;
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeoutSeconds * 1000))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{program} {string.Join(' ', args)} did not finish in {timeoutSeconds} s.");
        }
        return new ProcessResult(process.ExitCode, stdout.Result, stderr.Result);
    }
}
