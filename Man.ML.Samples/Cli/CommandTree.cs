// How manml's commands are grouped (export, measure, analyse): a command built under its flat name of earlier releases
// goes into its group under its short name, with the same options and action (ManmlCommands reads the old names).
using System.CommandLine;

namespace Man.ML.Samples.Cli;

internal static class CommandTree
{
    /// <summary>A command group: no action of its own, the subcommands under it.</summary>
    public static Command Group(string name, string description, params Command[] subcommands)
    {
        var group = new Command(name, description);
        foreach (var subcommand in subcommands) group.Subcommands.Add(subcommand);
        return group;
    }

    /// <summary><paramref name="command"/> under another name: the same options, arguments and action.</summary>
    public static Command Renamed(Command command, string name)
    {
        var copy = new Command(name, command.Description)
        {
            Action = command.Action, TreatUnmatchedTokensAsErrors = command.TreatUnmatchedTokensAsErrors,
        };
        foreach (var option in command.Options) copy.Options.Add(option);
        foreach (var argument in command.Arguments) copy.Arguments.Add(argument);
        foreach (var subcommand in command.Subcommands) copy.Subcommands.Add(subcommand);
        foreach (var validator in command.Validators) copy.Validators.Add(validator);
        return copy;
    }

    /// <summary>A command of an earlier release that became a lab tool: one line naming where it is now, exit code 2.</summary>
    public static Command MovedToLab(string name)
    {
        var command = new Command(name) { Hidden = true, TreatUnmatchedTokensAsErrors = false };
        command.SetAction(_ =>
        {
            Console.Error.WriteLine($"manml: error: '{name}' is a lab tool now: dotnet run --project Man.ML.Lab -c Release -- {name} ...");
            return 2;
        });
        return command;
    }
}
