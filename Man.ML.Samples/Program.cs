// manml: train, export, measure and analyse supervised local learning with Momentum Auxiliary Networks from the command
// line. The laboratory's tools (benchmarks, profiles, step timings) are manml-lab (Man.ML.Lab).
using System.CommandLine;
using Man.ML.Samples.Cli;

// Written to a file or pipe, Spectre.Console lays tables out for 80 columns; COLUMNS (as shells export it) widens them.
if (Console.IsOutputRedirected && int.TryParse(Environment.GetEnvironmentVariable("COLUMNS"), out int columns) && columns >= 40)
    Spectre.Console.AnsiConsole.Profile.Width = columns;

// manml trains on the CPU in this process: freed activation buffers stay in the heap, so a step does not page-fault
// them in afresh (Man.ML leaves the process's allocator alone unless an application asks; MANML_HEAP_TUNING=off declines).
Man.ML.Backend.HeapTuning.Apply();

return CliErrors.Invoke(ManmlCommands.Create(), TrainCommand.WithResumedArguments(ManmlCommands.WithGroupedNames(args)));
