// User mistakes end with one line on stderr and exit code 2; only real bugs show a stack trace.
using Spectre.Console;

namespace Man.ML.Samples.Cli;

internal static class CliErrors
{
    public static int Run(Func<int> action)
    {
        try
        {
            return action();
        }
        catch (Exception e) when (e is CliException or ArgumentException or FileNotFoundException or DirectoryNotFoundException
                                      or InvalidDataException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            var message = e is ArgumentException arg && arg.ParamName is not null
                ? arg.Message.Replace($" (Parameter '{arg.ParamName}')", "")
                : e.Message;
            Console.Error.WriteLine($"manml: error: {message.ReplaceLineEndings(" ")}");
            return 2;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("manml: cancelled.");
            return 130;
        }
    }
}
