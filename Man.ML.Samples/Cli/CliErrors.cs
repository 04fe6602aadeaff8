// User mistakes end with one line on stderr and exit code 2; a NaN or infinite loss or gradient with exit code 3; a
// backend that computes a convolution wrongly (the backend check) with exit code 4. Only real bugs show a stack trace.
using System.CommandLine;
using System.CommandLine.Parsing;
using Spectre.Console;

namespace Man.ML.Samples.Cli;

internal static class CliErrors
{
    // manml or manml-lab: the program the user ran, which shares these messages.
    internal static string Program => System.Reflection.Assembly.GetEntryAssembly()?.GetName().Name ?? "manml";

    /// <summary>The command line as the user gave it (after the program's name), for the lock file of an output folder.</summary>
    public static string CommandLine(ParseResult parse) => $"{Program} {string.Join(' ', parse.Tokens.Select(t => t.Value))}";

    /// <summary>The metrics.json of a finished run folder, or a clear error.</summary>
    public static System.Text.Json.JsonElement ReadRunMetrics(string dir)
    {
        var path = Path.Combine(dir, "metrics.json");
        if (!File.Exists(path)) throw new CliException($"'{path}' does not exist: is '{dir}' a finished run?");
        try { return System.Text.Json.JsonDocument.Parse(File.ReadAllText(path)).RootElement; }
        catch (System.Text.Json.JsonException e) { throw new CliException($"'{path}' is not valid JSON: {e.Message}"); }
    }

    /// <summary>
    /// Parses and runs a command line. A command line that does not parse (an unknown option, a value of the wrong type,
    /// a missing command) is a user mistake like any other: one line naming the option and the value, exit code 2.
    /// </summary>
    public static int Invoke(Command root, string[] args)
    {
        var parse = root.Parse(args);
        if (parse.Errors.Count == 0) return parse.Invoke();
        var first = parse.Errors[0];
        string more = parse.Errors.Count > 1 ? $" ({parse.Errors.Count - 1} more; see --help)" : " (see --help)";
        Console.Error.WriteLine($"{Program}: error: {Describe(first)}{more}");
        return 2;
    }

    // System.CommandLine names a value it cannot convert by its .NET type (System.Nullable`1[System.Double]); say what
    // the option takes instead.
    private static string Describe(ParseError error)
    {
        var (name, valueType, tokens) = error.SymbolResult switch
        {
            OptionResult o => (o.Option.Name, o.Option.ValueType, o.Tokens),
            ArgumentResult { Parent: OptionResult o } a => (o.Option.Name, a.Argument.ValueType, a.Tokens),
            _ => (null, null, null),
        };
        if (name is not null && valueType is not null && tokens is { Count: > 0 })
        {
            var type = Nullable.GetUnderlyingType(valueType) ?? valueType;
            string? expected = type == typeof(int) ? $"a whole number from {int.MinValue} to {int.MaxValue}"
                : type == typeof(long) ? "a whole number"
                : type == typeof(double) || type == typeof(float) ? "a number (for example 0.05 or 1e-4)"
                : type == typeof(bool) ? "true or false"
                : null;
            if (expected is not null) return $"{name}: '{string.Join(" ", tokens.Select(t => t.Value))}' is not {expected}.";
        }
        return error.Message.ReplaceLineEndings(" ");
    }

    /// <summary>Runs a command; in an MPI job of several ranks, a rank that fails ends the whole job (the others may be
    /// waiting for it), its message naming it.</summary>
    public static int Run(Func<int> action)
    {
        int code = RunAlone(action);
        if (code != 0 && Man.ML.Distributed.MpiWorld.Current is { Size: > 1 } world)
        {
            Console.Error.WriteLine($"{Program}: rank {world.Rank} of {world.Size} failed (exit code {code}); ending the job.");
            world.Abort(code);
        }
        return code;
    }

    private static int RunAlone(Func<int> action)
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
        catch (Man.ML.Distributed.DistributedException e)
        {
            Console.Error.WriteLine($"{Program}: distributed run stopped: {e.Message}");
            return 5;
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
