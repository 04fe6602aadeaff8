// manml's command tree. Users train (train, presets, doctor), use what they trained (score-model, export onnx|weights,
// the ML.NET sample image-folder), measure what training a configuration costs (measure memory|fit-memory) and analyse
// trained models and runs (analyse probe|cka|features|summarize|plot). Every flat name of earlier releases still works:
// export-onnx, measure-memory, probe, ... are read as the grouped command (its help included), and bench, profile,
// measure-speed and scoring-throughput, which moved to manml-lab, say so.
using System.CommandLine;

namespace Man.ML.Samples.Cli;

internal static class ManmlCommands
{
    /// <summary>The commands that moved to manml-lab (Man.ML.Lab).</summary>
    public static readonly IReadOnlyList<string> LabCommands = new[] { "bench", "profile", "measure-speed", "scoring-throughput" };

    /// <summary>The flat names of earlier releases and the grouped commands they now are.</summary>
    public static readonly IReadOnlyDictionary<string, string[]> OldNames = new Dictionary<string, string[]>
    {
        ["export-onnx"] = new[] { "export", "onnx" },
        ["export-weights"] = new[] { "export", "weights" },
        ["measure-memory"] = new[] { "measure", "memory" },
        ["measure-fit-memory"] = new[] { "measure", "fit-memory" },
        ["probe"] = new[] { "analyse", "probe" },
        ["cka"] = new[] { "analyse", "cka" },
        ["features"] = new[] { "analyse", "features" },
        ["summarize"] = new[] { "analyse", "summarize" },
        ["plot"] = new[] { "analyse", "plot" },
    };

    /// <summary>The command line with a flat name of an earlier release spelled as the grouped command it is now.</summary>
    public static string[] WithGroupedNames(string[] args) =>
        args.Length > 0 && OldNames.TryGetValue(args[0], out var grouped) ? grouped.Concat(args.Skip(1)).ToArray() : args;

    public static RootCommand Create()
    {
        var root = new RootCommand("Man.ML: supervised local learning with Momentum Auxiliary Networks (MAN).");
        root.Subcommands.Add(TrainCommand.Create());
        root.Subcommands.Add(PresetsCommand.Create());
        root.Subcommands.Add(DoctorCommand.Create());
        root.Subcommands.Add(ImageFolderCommand.Create());
        root.Subcommands.Add(ScoreModelCommand.Create());

        var onnx = ExportOnnxCommand.Create();
        var weights = ExportWeightsCommand.Create();
        root.Subcommands.Add(CommandTree.Group("export", "Write a trained model for other runtimes: an ONNX graph or PyTorch weights.",
            CommandTree.Renamed(onnx, "onnx"), CommandTree.Renamed(weights, "weights")));

        var memory = MeasureCommands.Memory();
        var fitMemory = FitMemoryCommand.Create();
        root.Subcommands.Add(CommandTree.Group("measure", "Measure what training a configuration costs, in this process (prints JSON).",
            CommandTree.Renamed(memory, "memory"), CommandTree.Renamed(fitMemory, "fit-memory")));

        var probe = AnalysisCommands.Probe();
        var cka = AnalysisCommands.CkaCommand();
        var features = AnalysisCommands.Features();
        var summarize = SummarizeCommand.Create();
        var plot = PlotCommand.Create();
        var analyse = CommandTree.Group("analyse", "Analyse trained models (the paper's Figures 3 to 5) and runs (tables, curves).",
            CommandTree.Renamed(probe, "probe"), CommandTree.Renamed(cka, "cka"), CommandTree.Renamed(features, "features"),
            CommandTree.Renamed(summarize, "summarize"), CommandTree.Renamed(plot, "plot"));
        analyse.Aliases.Add("analyze");
        root.Subcommands.Add(analyse);
        foreach (var name in LabCommands) root.Subcommands.Add(CommandTree.MovedToLab(name));
        return root;
    }
}
