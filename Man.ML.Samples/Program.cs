// manml: train, measure and analyse supervised local learning with Momentum Auxiliary Networks from the command line.
using System.CommandLine;
using Man.ML.Samples.Cli;

// Written to a file or pipe, Spectre.Console lays tables out for 80 columns; COLUMNS (as shells export it) widens them.
if (Console.IsOutputRedirected && int.TryParse(Environment.GetEnvironmentVariable("COLUMNS"), out int columns) && columns >= 40)
    Spectre.Console.AnsiConsole.Profile.Width = columns;

// manml trains on the CPU in this process: freed activation buffers stay in the heap, so a step does not page-fault
// them in afresh (Man.ML leaves the process's allocator alone unless an application asks; MANML_HEAP_TUNING=off declines).
Man.ML.Backend.HeapTuning.Apply();

var root = new RootCommand("Man.ML: supervised local learning with Momentum Auxiliary Networks (MAN).");
root.Subcommands.Add(TrainCommand.Create());
root.Subcommands.Add(DoctorCommand.Create());
root.Subcommands.Add(MeasureCommands.Memory());
root.Subcommands.Add(ImageFolderCommand.Create());
root.Subcommands.Add(ScoreModelCommand.Create());
root.Subcommands.Add(ExportWeightsCommand.Create());
root.Subcommands.Add(ExportOnnxCommand.Create());
root.Subcommands.Add(FitMemoryCommand.Create());
root.Subcommands.Add(ScoringThroughputCommand.Create());
root.Subcommands.Add(PresetsCommand.Create());
root.Subcommands.Add(SummarizeCommand.Create());
root.Subcommands.Add(MeasureCommands.Speed());
root.Subcommands.Add(BenchCommand.Create());
root.Subcommands.Add(PlotCommand.Create());
root.Subcommands.Add(ProfileCommand.Create());
root.Subcommands.Add(AnalysisCommands.Probe());
root.Subcommands.Add(AnalysisCommands.CkaCommand());
root.Subcommands.Add(AnalysisCommands.Features());
return root.Parse(TrainCommand.WithResumedArguments(args)).Invoke();
