// User mistakes end with one line on stderr and exit code 2; a NaN or infinite loss or gradient with exit code 3; a
// backend that computes a convolution wrongly (the backend check) with exit code 4. Only real bugs show a stack trace.
using Spectre.Console;

namespace Man.ML.Samples.Cli;

internal static class CliErrors
{
    // manml or manml-lab: the program the user ran, which shares these messages.
    private static string Program => System.Reflection.Assembly.GetEntryAssembly()?.GetName().Name ?? "manml";

    /// <summary>The metrics.json of a finished run folder, or a clear error.</summary>
    public static System.Text.Json.JsonElement ReadRunMetrics(string dir)
    {
        var path = Path.Combine(dir, "metrics.json");
        if (!File.Exists(path)) throw new CliException($"'{path}' does not exist: is '{dir}' a finished run?");
        try { return System.Text.Json.JsonDocument.Parse(File.ReadAllText(path)).RootElement; }
        catch (System.Text.Json.JsonException e) { throw new CliException($"'{path}' is not valid JSON: {e.Message}"); }
    }

    public static int Run(Func<int> action)
    {
        try
        {
            return action();
        }
        // Option errors are one type (InvalidOptionException) wherever they are found; any other ArgumentException is a
        // bug and keeps its stack trace.
        catch (Exception e) when (e is CliException or InvalidOptionException or FileNotFoundException or DirectoryNotFoundException
                                      or InvalidDataException or UnauthorizedAccessException or PlatformNotSupportedException
                                      or IOException) // a full disk at a write: files are written atomically, the previous one survives
        {
            Console.Error.WriteLine($"{Program}: error: {e.Message.ReplaceLineEndings(" ")}");
            return 2;
        }
        catch (Man.ML.Training.NonFiniteTrainingException e)
        {
            Console.Error.WriteLine($"{Program}: training stopped: {e.Message}");
            return 3;
        }
        catch (Man.ML.Local.NonFiniteException e) // measure-memory, measure-speed and the analyses step a LocalTrainer directly
        {
            Console.Error.WriteLine($"{Program}: training stopped: {e.Message} No update was applied.");
            return 3;
        }
        catch (Man.ML.Backend.BackendFaultException e)
        {
            Console.Error.WriteLine($"{Program}: backend check failed: {e.Message.ReplaceLineEndings(" ")}");
            return 4;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine($"{Program}: cancelled.");
            return 130;
        }
    }
}
