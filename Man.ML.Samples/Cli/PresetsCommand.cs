// manml presets: the paper's experiments by name, one line each.
using System.CommandLine;
using Man.ML.Training;

namespace Man.ML.Samples.Cli;

internal static class PresetsCommand
{
    public static Command Create()
    {
        var command = new Command("presets", "List the paper's experiments (Table 1 cells, ablation rows) usable with 'manml train --preset NAME'.");
        command.SetAction(_ =>
        {
            int width = ExperimentPresets.All.Max(p => p.Name.Length);
            foreach (var preset in ExperimentPresets.All)
                Console.WriteLine($"{preset.Name.PadRight(width)}  {preset.Description}");
            return 0;
        });
        return command;
    }
}
