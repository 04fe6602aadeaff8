// manml-lab: the laboratory's tools behind docs/BENCHMARKS.md. bench measures memory, step time and their floors for a
// set of configurations (each in child processes of this program: measure-memory, measure-speed); profile times a
// step unit by unit and part by part; scoring-throughput sets ML.NET's Transform against the engine.
using System.CommandLine;
using Man.ML.Lab.Cli;
using Man.ML.Samples.Cli;

if (Console.IsOutputRedirected && int.TryParse(Environment.GetEnvironmentVariable("COLUMNS"), out int columns) && columns >= 40)
    Spectre.Console.AnsiConsole.Profile.Width = columns;

// Measured as manml trains: freed activation buffers stay in the heap (the library leaves the allocator alone unless
// an application asks; MANML_HEAP_TUNING=off declines).
Man.ML.Backend.HeapTuning.Apply();

var root = new RootCommand("Man.ML's laboratory: benchmarks, profiles and timings (the product's command line is manml).");
root.Subcommands.Add(BenchCommand.Create());
root.Subcommands.Add(ProfileCommand.Create());
root.Subcommands.Add(MeasureSpeedCommand.Create());
root.Subcommands.Add(PipelineCommand.Create());
root.Subcommands.Add(DataParallelCommand.Create());
root.Subcommands.Add(MeasureCommands.Memory());
root.Subcommands.Add(ScoringThroughputCommand.Create());
root.Subcommands.Add(ServeLoadCommand.Create());
return CliErrors.Invoke(root, args);
