// manml train: train a network (CIFAR ResNets on CIFAR-10/SVHN/STL-10 files, ImageNet networks on the ImageNet folder
// layout) by end-to-end backprop or a local-learning rule, with or without MAN.
// Writes DIR/metrics.json (config, per-epoch figures, final figures) and DIR/model.ckpt (the trained backbone).
using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Training;
using Spectre.Console;

namespace Man.ML.Samples.Cli;

internal static class TrainCommand
{
    /// <summary>The bundled CIFAR-10 sample (copied next to the executable).</summary>
    public static string BundledSample => Path.Combine(AppContext.BaseDirectory, "data", "cifar10-sample");

    private const string ArgumentsFile = "run.args.json";

    /// <summary>
    /// `manml train --resume DIR` continues with the options the run was started with (saved in DIR/run.args.json when
    /// it began): each saved option not given now is added; an option given now replaces the saved one (and when it
    /// changes what is trained, the checkpoint refuses it by name).
    /// </summary>
    public static string[] WithResumedArguments(string[] args)
    {
        if (args.Length == 0 || args[0] != "train") return args;
        int at = Array.IndexOf(args, "--resume");
        if (at < 0 || at + 1 >= args.Length) return args;
        var saved = Path.Combine(args[at + 1], ArgumentsFile);
        if (!File.Exists(saved)) return args;
        string[] original;
        try { original = JsonSerializer.Deserialize<string[]>(File.ReadAllText(saved)) ?? Array.Empty<string>(); }
        catch (JsonException) { return args; } // the train command reports the damaged run folder
        var given = Groups(args.Skip(1)).Select(g => Family(g[0])).ToHashSet();
        var missing = Groups(original).Where(g => !given.Contains(Family(g[0]))).SelectMany(g => g);
        return args.Concat(missing).ToArray();
    }

    // An option token and the values after it; --man and --no-man are one switch.
    internal static IEnumerable<List<string>> Groups(IEnumerable<string> tokens)
    {
        List<string>? group = null;
        foreach (var t in tokens)
        {
            if (t.StartsWith("--", StringComparison.Ordinal) || group is null)
            {
                if (group is not null) yield return group;
                group = new List<string> { t };
            }
            else group.Add(t);
        }
        if (group is not null) yield return group;
    }

    private static string Family(string option) => option is "--no-man" ? "--man" : option.Split('=')[0];

    // The command-line option behind each key of a run's plan, to name it when a checkpoint refuses a resume.
    private static readonly Dictionary<string, string> OptionOfPlanKey = new()
    {
        ["dataset"] = "--dataset", ["arch"] = "--arch", ["family"] = "--arch", ["classes"] = "--data", ["image_size"] = "--image-size",
        ["units"] = "--arch", ["parameters_backbone"] = "--arch", ["k"] = "--k", ["split"] = "--split", ["split_source"] = "--split",
        ["split_table"] = "--split", ["segment_ends"] = "--split", ["rule"] = "--rule", ["dgl_head"] = "--dgl-head",
        ["infopro"] = "--aux-config/--infopro-loss/--lambda/--lambda-schedule", ["heads"] = "--rule", ["man"] = "--man/--no-man",
        ["man_ablation"] = "--man-ablation", ["man_init"] = "--man-init", ["ema_momentum"] = "--ema-momentum", ["man_mix"] = "--man-mix",
        ["epochs"] = "--epochs", ["batch_size"] = "--batch-size", ["lr"] = "--lr", ["weight_decay"] = "--weight-decay", ["seed"] = "--seed",
        ["init_from"] = "--init-from", ["init_classifier"] = "--init-from",
        ["augmentation"] = "--dataset", ["distributed"] = "--distributed (and mpirun -np)", ["micro_batches"] = "--micro-batches",
    };

    public static Command Create()
    {
        var model = new ModelOptions();
        var data = new Option<string[]>("--data")
        {
            Description = "Training data: CIFAR-10/SVHN/STL-10 files or folders of them (default: the bundled CIFAR-10 sample); for --dataset imagenet the " +
                          "folder holding train/<class>/ and val/.",
            AllowMultipleArgumentsPerToken = true,
        };
        var trainLimit = new Option<int?>("--train-limit")
        {
            Description = "Train on the first N training images only (ImageNet layout: N images spread evenly over the classes).",
        };
        var valSplit = new Option<int?>("--val-split")
        {
            Description = "Hold out the last N images of --data for validation (default 1000, unless --val is given).",
        };
        var val = new Option<string[]>("--val") { Description = "Validation files instead of a held-out split.", AllowMultipleArgumentsPerToken = true };
        var test = new Option<string[]>("--test") { Description = "Extra evaluation sets, each reported separately.", AllowMultipleArgumentsPerToken = true };
        var output = new Option<string>("--out")
        {
            Description = "Output folder for metrics.json and model.ckpt (default runs/latest, or the --resume folder).",
            DefaultValueFactory = _ => "runs/latest",
        };
        var checkpointEvery = new Option<int>("--checkpoint-every")
        {
            Description = "Write DIR/run.ckpt (everything needed to resume) every N epochs and at the end; 0: never.", DefaultValueFactory = _ => 0,
        };
        var resume = new Option<string?>("--resume")
        {
            Description = "Continue the run whose folder holds run.ckpt (same options); writes there unless --out is given.",
        };
        var valLabels = new Option<string?>("--val-labels")
        {
            Description = "ImageNet layout: label file of a flat val/ folder ('FILE LABEL' lines; default: val_labels.txt, val.txt, LOC_val_solution.csv or " +
                          "labels.txt beside or inside val/).",
        };
        var onNonFinite = new Option<string>("--on-nonfinite")
        {
            Description = "On a NaN or infinite loss or gradient: stop (default) or skip-step.", DefaultValueFactory = _ => "stop",
        };
        var tensorBoard = CommonOptions.TensorBoard();
        var noBackendCheck = new Option<bool>("--no-backend-check")
        {
            Description = "Skip the check, before the first step, that this machine's libtorch computes every convolution of the run correctly against " +
                          "float64 (exit code 4 when it does not).",
        };

        var command = new Command("train", "Train a network by supervised local learning (DGL + MAN at K = 16 by default).");
        foreach (var o in model.All.Concat(
            new Option[] { data, trainLimit, valSplit, val, test, output, checkpointEvery, resume, valLabels, onNonFinite, noBackendCheck, tensorBoard }))
            command.Options.Add(o);
        command.SetAction((parse, cancellation) => Task.FromResult(CliErrors.Run(() =>
        {
            model.ApplyProcessSettings(parse);
            var options = model.ToTrainingOptions(parse);
            options.Validate();
            // Every rank of a distributed run trains; rank 0 alone prints and writes the run's files.
            bool mainRank = options.Distributed == Distributed.DistributedMode.None || Distributed.MpiJob.Rank == 0;
            // Every rank refuses a job of the wrong size before rank 0 creates the output folder: the launcher may kill
            // rank 0 as soon as another rank exits, before it could take the folder back.
            RunPlan.DistributedOf(options);
            if (!mainRank)
                AnsiConsole.Console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(TextWriter.Null) });
            if (options.Pretrained is { } pretrained && mainRank) FetchWithProgress(options, pretrained);
            var dataset = options.Dataset;
            var resumeDir = parse.GetValue(resume);
            var outDir = resumeDir is not null && parse.GetResult(output) is null or { Implicit: true } ? resumeDir : parse.GetValue(output)!;
            string? resumeFrom = null;
            if (resumeDir is not null)
            {
                resumeFrom = Path.Combine(resumeDir, "run.ckpt");
                if (!File.Exists(resumeFrom))
                    throw new CliException($"--resume '{resumeDir}' holds no run.ckpt (train with --checkpoint-every N to write one).");
                ModelFiles.NoteUnverified(resumeFrom, TrainingCheckpoint.ReadHeader(resumeFrom).Verified);
            }
            int every = parse.GetValue(checkpointEvery);
            if (every < 0) throw new CliException($"--checkpoint-every must be 0 or more (got {every}).");
            var policy = Choices.Parse<NonFinitePolicy>(parse.GetValue(onNonFinite)!, onNonFinite.Name);
            // One run at a time in a folder; a run that fails before its first run checkpoint takes back what it wrote
            // there (a resumed run keeps everything: the folder is the earlier run's).
            using var folder = mainRank ? OutputFolder.Acquire(outDir, output.Name, CliErrors.CommandLine(parse)) : null;
            bool keep = resumeDir is not null;
            try { return Train(keepFolder: () => keep = true); }
            catch
            {
                if (!keep) folder?.RemoveCreated();
                throw;
            }

            // Everything after the folder is locked; keepFolder() marks that the run wrote something worth keeping.
            int Train(Action keepFolder)
            {
                string[] dataPaths;
                if (parse.GetValue(data) is { Length: > 0 } given) dataPaths = given;
                else if (dataset == DatasetKind.Cifar10) dataPaths = new[] { BundledSample };
                else throw new CliException($"--dataset {dataset.Name} needs --data (no {dataset.Name} sample is bundled).");
                var valPaths = parse.GetValue(val) ?? Array.Empty<string>();
                var testPaths = parse.GetValue(test) ?? Array.Empty<string>();
                int? holdOut = parse.GetValue(valSplit);
                if (valPaths.Length > 0 && holdOut is not null) throw new CliException("Give either --val or --val-split, not both.");
                var limit = parse.GetValue(trainLimit);
                var trainer = new Trainer(options)
                {
                    CheckpointPath = every > 0 || resumeFrom is not null ? Path.Combine(outDir, "run.ckpt") : null,
                    CheckpointEvery = every,
                    ResumeFrom = resumeFrom,
                    OnNonFinite = policy,
                    CheckBackend = !parse.GetValue(noBackendCheck),
                    TensorBoardDirectory = parse.GetValue(tensorBoard),
                };
                trainer.CheckpointWritten += (_, _) => keepFolder(); // a checkpoint to --resume from is never taken back
                // The arguments a --resume continues with, written once the data and the plan have been checked.
                void WriteArguments()
                {
                    if (every > 0 && resumeDir is null && mainRank)
                        AtomicFile.WriteText(Path.Combine(outDir, ArgumentsFile), JsonSerializer.Serialize(
                            parse.Tokens.Where(t => t.Type != System.CommandLine.Parsing.TokenType.Command).Select(t => t.Value).ToArray()));
                }
                string preset = parse.GetValue(model.Preset)!;
                if (dataset.IsImageFolder)
                {
                    if (dataPaths.Length != 1) throw new CliException("--dataset imagenet takes one --data folder (holding train/ and val/).");
                    if (testPaths.Length > 0) throw new CliException("--test is not supported with --dataset imagenet; evaluate on val/.");
                    var (trainFiles, valFiles) = ReadImageFolder(dataPaths[0], valPaths, holdOut, limit, parse.GetValue(valLabels));
                    int side = options.ImageSize ?? dataset.ImageSize;
                    var config = Prepare(trainer, parse, preset, dataPaths, limit, holdOut, valPaths, testPaths, outDir,
                        trainFiles.Count, valFiles?.Count ?? 0, trainFiles.ClassNames.Count, side);
                    WriteArguments();
                    var result = RunWithProgress(trainer, options.Epochs, () => Resumed(() => trainer.Train(trainFiles, valFiles, cancellation)));
                    Finish(trainer, result, config, outDir, trainFiles.ClassNames);
                }
                else
                {
                    if (parse.GetResult(valLabels) is { Implicit: false }) throw new CliException("--val-labels applies to --dataset imagenet only.");
                    if (valPaths.Length == 0) holdOut ??= 1000;
                    using var all = dataset.Read(dataPaths);
                    LabeledImages pool = all, validation;
                    if (holdOut is int n)
                    {
                        if (n < 1 || n >= all.Count)
                            throw new CliException($"--val-split {n} must be between 1 and {all.Count - 1} (the data holds {all.Count} images).");
                        validation = all.Slice(all.Count - n, n, $"last {n} images of {all.Source}");
                        pool = all.Slice(0, all.Count - n, $"first {all.Count - n} images of {all.Source}");
                    }
                    else validation = dataset.Read(valPaths);
                    if (limit is int l)
                    {
                        if (l < 2 || l > pool.Count)
                            throw new CliException($"--train-limit {l} must be between 2 and {pool.Count} (the training images available).");
                        pool = pool.Slice(0, l, $"first {l} training images of {all.Source}");
                    }
                    var tests = testPaths.Select(p => (Name: Path.GetFileName(Path.TrimEndingDirectorySeparator(p)), Data: dataset.Read(new[] { p }))).ToList();
                    var config = Prepare(trainer, parse, preset, dataPaths, limit, holdOut, valPaths, testPaths, outDir,
                        pool.Count, validation.Count, pool.ClassNames.Count, (int)pool.Images.shape[2]);
                    WriteArguments();
                    var result = RunWithProgress(trainer, options.Epochs, () => Resumed(() => trainer.Train(pool, validation, tests, cancellation)));
                    Finish(trainer, result, config, outDir, pool.ClassNames);
                    foreach (var (_, d) in tests) d.Dispose();
                    if (!ReferenceEquals(validation, all)) validation.Dispose();
                    if (!ReferenceEquals(pool, all)) pool.Dispose();
                }
                return 0;
            }
        })));
        return command;
    }

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DictionaryKeyPolicy = null,
    };

    // Downloaded here, with a progress bar, so that the plan finds the weights in the cache (other ranks wait for none:
    // each verifies the cached file, or downloads its own copy under a temporary name).
    private static void FetchWithProgress(TrainingOptions options, string name)
    {
        var source = Man.ML.Interop.PretrainedWeights.Find(options.Architecture, name, "--pretrained");
        var cached = Man.ML.Interop.PretrainedWeights.CachedPath(source, options.PretrainedCache);
        if (File.Exists(cached) && Man.ML.Interop.PretrainedWeights.HashMatches(cached, source.Sha256)) return;
        AnsiConsole.MarkupLineInterpolated($"pretrained: {source.Architecture} {source.Name} from {source.Url.ToString()} into {cached}");
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn())
            .Start(context =>
            {
                var task = context.AddTask(source.FileName, autoStart: true, maxValue: 1);
                Man.ML.Interop.PretrainedWeights.Fetch(source, options.PretrainedCache, p =>
                {
                    task.MaxValue = p.Total ?? Math.Max(p.Received, 1);
                    task.Value = p.Received;
                });
            });
    }

    private static TrainingResult RunWithProgress(Trainer trainer, int epochs, Func<TrainingResult> train)
    {
        TrainingResult? result = null;
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(context =>
            {
                ProgressTask? task = null;
                trainer.BatchCompleted += p =>
                {
                    if (p.Batch == 1) task = context.AddTask($"epoch {p.Epoch}/{epochs}", maxValue: p.BatchesPerEpoch);
                    task!.Increment(1);
                    task.Description = $"epoch {p.Epoch}/{epochs}  loss {p.Loss:0.000}  lr {p.LearningRate:0.0000}";
                };
                trainer.EpochCompleted += m =>
                    task!.Description = $"epoch {m.Epoch}/{epochs}  loss {m.TrainLoss:0.000}  train {m.TrainAccuracy:P1}  " +
                        $"val {m.ValAccuracy:P1}  ({m.Seconds:0}s)";
                result = train();
            });
        return result!;
    }

    // ROOT/train and ROOT/val (or --val DIR, or --val-split N held out evenly from train/); --train-limit N spread evenly.
    private static (ImageFileSet Train, ImageFileSet? Validation) ReadImageFolder(string root, string[] valPaths, int? holdOut, int? limit, string? valLabels)
    {
        var (train, validation) = ImageNetFolder.Read(root, valLabels);
        if (valPaths.Length > 1) throw new CliException("--dataset imagenet takes at most one --val folder.");
        if (valPaths.Length == 1) validation = ImageNetFolder.ReadValidation(valPaths[0], train.ClassNames, valLabels);
        if (holdOut is int n)
        {
            if (n < 1 || n >= train.Count)
                throw new CliException($"--val-split {n} must be between 1 and {train.Count - 1} (train/ holds {train.Count} images).");
            var held = Enumerable.Range(0, n).Select(i => (int)((long)i * train.Count / n)).ToHashSet();
            var rest = Enumerable.Range(0, train.Count).Where(i => !held.Contains(i)).ToArray();
            validation = new ImageFileSet(held.Order().Select(i => train.Paths[i]).ToArray(), held.Order().Select(i => train.Labels[i]).ToArray(),
                train.ClassNames, $"{n} images held out evenly from {train.Source}");
            train = new ImageFileSet(rest.Select(i => train.Paths[i]).ToArray(), rest.Select(i => train.Labels[i]).ToArray(), train.ClassNames,
                $"{train.Source} less {n} held-out images");
        }
        if (limit is int l)
        {
            if (l < 2 || l > train.Count) throw new CliException($"--train-limit {l} must be between 2 and {train.Count} (the training images available).");
            train = train.Spread(l);
        }
        return (train, validation);
    }

    // A checkpoint that refuses a resume names the plan key; say which option sets it.
    private static TrainingResult Resumed(Func<TrainingResult> train)
    {
        try { return train(); }
        catch (InvalidOptionException e) when (OptionOfPlanKey.TryGetValue(e.Option, out var option))
        {
            throw new CliException($"--resume: {e.Message} (option {option})");
        }
    }

    // Resolves the run once (the network is built here and trained later), checks free space and prints the run's first line.
    private static JsonObject Prepare(Trainer trainer, ParseResult parse, string? preset, string[] dataPaths, int? limit,
        int? holdOut, string[] valPaths, string[] testPaths, string outDir, int trainCount, int valCount, int classes, int imageSize)
    {
        var options = trainer.Options;
        // Every batch would be the whole set, and the default rate 0.1·B/128 would follow a batch that is never seen.
        if (options.BatchSize > trainCount)
            throw new CliException($"--batch-size {options.BatchSize} is larger than the {trainCount} training images: give at most {trainCount}.");
        var plan = trainer.Prepare(classes, imageSize);
        if (plan.Distributed is { WritesFiles: false }) return plan.ToJson();
        // The model file as measured from the network; with run checkpoints the trainer checks the whole, once its engine exists.
        trainer.FinalOutputBytes = OutputSpace.ModelFileBytes(trainer.PreparedNetwork!) + OutputSpace.HeaderSlackBytes;
        if (trainer.CheckpointPath is null)
            OutputSpace.Ensure(outDir, trainer.FinalOutputBytes, FormattableString.Invariant($"the model of {trainer.FinalOutputBytes / 1048576.0:0.0} MiB"));
        var config = Config(parse, plan, preset, dataPaths, limit, holdOut, valPaths, testPaths, outDir, trainCount, valCount);
        AnsiConsole.MarkupLine(Markup.Escape($"manml train {plan.Summary}, ") +
                               Markup.Escape(FormattableString.Invariant($"{trainCount} training / {valCount} validation images at {imageSize}x{imageSize}, ") +
                                             FormattableString.Invariant($"{options.Epochs} epochs, batch {options.BatchSize}, lr {plan.LearningRate:0.###}")));
        if (plan.Pipeline is { } pipeline)
        {
            AnsiConsole.MarkupLine(Markup.Escape($"pipeline: {pipeline.Describe()}"));
            // glibc's per-thread arenas cost the stages a quarter of their speed; only the environment at start changes them.
            if (OperatingSystem.IsLinux() && Environment.GetEnvironmentVariable("MALLOC_ARENA_MAX") is null)
                AnsiConsole.MarkupLine(Markup.Escape(
                    "note: start pipelined runs with MALLOC_ARENA_MAX=1 in the environment for full speed (docs/PIPELINE.md)"));
        }
        if (plan.Distributed is { StagesAsRanks: true } stages)
            AnsiConsole.MarkupLine(Markup.Escape($"distributed: {stages.Ranks} ranks, one pipeline stage each (rank s trains stage s), " +
                                                 $"batch {options.BatchSize}; {stages.Library}"));
        else if (plan.Distributed is { } job)
            AnsiConsole.MarkupLine(Markup.Escape($"distributed: {job.Ranks} ranks × batch {options.BatchSize} = global batch {plan.GlobalBatchSize}" +
                                                 (options.MicroBatches > 1 ? $" ({options.MicroBatches} micro-batches per rank)" : "") + $"; {job.Library}"));
        if (plan.InitialWeights is { } w)
            AnsiConsole.MarkupLine(Markup.Escape($"initialised from {w.Path} ({Choices.Name(w.Format)}, {w.TensorsLoaded} tensors)" +
                (w.HeadReplaced
                    ? $"; its classifier has another class count and was replaced by a fresh {classes}-class one " +
                      $"(PyTorch's nn.Linear initialisation, seed {options.Seed})"
                    : "")));
        return config;
    }

    private static void Finish(Trainer trainer, TrainingResult result, JsonObject config, string outDir, IReadOnlyList<string> classNames)
    {
        var plan = result.Plan;
        if (plan.Distributed is { WritesFiles: false }) return; // rank 0 writes the run's files
        ModelCheckpoint.Save(Path.Combine(outDir, "model.ckpt"), result.Network, new CheckpointInfo
        {
            Architecture = plan.Architecture,
            Classes = classNames.Count,
            ImageSize = plan.ImageSize,
            ClassNames = classNames.ToArray(),
            NormalizationMean = plan.Options.Normalization.Mean,
            NormalizationStd = plan.Options.Normalization.Std,
            TrainedWith = result.TrainedWith,
            // What --dataset trained with: image folders get ImageNet's crops, the in-memory data sets CIFAR's whole image.
            ImageRecipe = plan.Options.Dataset.IsImageFolder ? ImageRecipe.ImageNet : ImageRecipe.Cifar,
        });
        var metrics = new JsonObject
        {
            ["config"] = config,
            ["epochs"] = JsonSerializer.SerializeToNode(result.Epochs, Json),
            ["final"] = JsonSerializer.SerializeToNode(result.Final, Json),
            ["backend"] = Backend(trainer.BackendReport),
        };
        AtomicFile.WriteText(Path.Combine(outDir, "metrics.json"), metrics.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        PrintSummary(plan, result, outDir);
        if (trainer.BackendReport is { } backend)
            AnsiConsole.MarkupLine(Markup.Escape(
                FormattableString.Invariant($"backend check: {backend.Convolutions.Count} convolution shapes correct against float64 ") +
                (backend.Precision == Models.TrainingPrecision.Float32 ? "" : $"in {Choices.Name(backend.Precision)} ") +
                FormattableString.Invariant($"({backend.Seconds:0.00} s; {backend.Environment.Cpu}; oneDNN {backend.Environment.OneDnnIsa}; ") +
                FormattableString.Invariant($"convolution workaround {Choices.Name(backend.Environment.Workaround)}{FaultNote(backend.Environment)})")));
    }

    private static string FaultNote(Backend.BackendEnvironment e) => !e.SmallOutputChannelFault ? ""
        : e.Workaround == Models.ConvolutionWorkaround.Never ? "; this CPU computes small output channel counts wrongly and the workaround is off"
        : "; this CPU computes small output channel counts wrongly: such convolutions are padded or computed as shifted taps";

    // What the backend was and what its check found (null when --no-backend-check).
    private static JsonObject? Backend(Backend.BackendReport? report) => report is null ? null : new JsonObject
    {
        ["cpu"] = report.Environment.Cpu,
        ["onednn_isa"] = report.Environment.OneDnnIsa,
        ["libtorch"] = report.Environment.LibTorch,
        ["torchsharp"] = report.Environment.TorchSharp,
        ["conv_workaround"] = Choices.Name(report.Environment.Workaround),
        ["small_output_channel_fault"] = report.Environment.SmallOutputChannelFault,
        ["convolution_shapes_checked"] = report.Convolutions.Count,
        ["check_seconds"] = Math.Round(report.Seconds, 3),
        ["precision"] = Choices.Name(report.Precision),
    };

    /// <summary>Keys of metrics.json's config that describe this invocation rather than the run: the rest is the run's plan.</summary>
    public static IReadOnlyList<string> InvocationKeys { get; } = new[]
    {
        "preset", "data", "train_limit", "val_split", "val", "test", "train_images", "val_images", "threads",
        "out", "checkpoint_every", "resume", "on_nonfinite",
    };

    // metrics.json's config: the run's plan (RunPlan.ToJson), then how this invocation found its data and where it wrote.
    private static JsonObject Config(ParseResult parse, RunPlan plan, string? preset, string[] data, int? trainLimit,
        int? valSplit, string[] val, string[] test, string outDir, int trainImages, int valImages)
    {
        var config = plan.ToJson();
        var invocation = new JsonObject
        {
            ["preset"] = preset,
            ["data"] = new JsonArray(data.Select(d => (JsonNode)Path.GetFullPath(d)).ToArray()),
            ["train_limit"] = trainLimit,
            ["val_split"] = valSplit,
            ["val"] = new JsonArray(val.Select(d => (JsonNode)Path.GetFullPath(d)).ToArray()),
            ["test"] = new JsonArray(test.Select(d => (JsonNode)Path.GetFullPath(d)).ToArray()),
            ["train_images"] = trainImages,
            ["val_images"] = valImages,
            ["threads"] = TorchSharp.torch.get_num_threads(),
            ["out"] = Path.GetFullPath(outDir),
            ["checkpoint_every"] = parse.GetValue<int>("--checkpoint-every"),
            ["resume"] = parse.GetValue<string?>("--resume"),
            ["on_nonfinite"] = Choices.Name(Choices.Parse<NonFinitePolicy>(parse.GetValue<string>("--on-nonfinite")!, "--on-nonfinite")),
        };
        foreach (var key in InvocationKeys)
        {
            var value = invocation[key];
            invocation.Remove(key);
            config[key] = value;
        }
        return config;
    }

    private static void PrintSummary(RunPlan plan, TrainingResult result, string outDir)
    {
        var table = new Table().Title($"{plan.Architecture} K={plan.K} {Choices.Name(plan.Rule)}{(plan.Man is null ? "" : "+MAN")}, seed {plan.Options.Seed}");
        table.AddColumns("epoch", "train loss", "train acc", "val acc", "lr", "seconds");
        foreach (var e in result.Epochs)
            table.AddRow(e.Epoch.ToString(), e.TrainLoss.ToString("0.000"), e.TrainAccuracy.ToString("P2"),
                e.ValAccuracy?.ToString("P2") ?? "-", e.Lr.ToString("0.0000"), e.Seconds.ToString("0.0"));
        AnsiConsole.Write(table);
        var f = result.Final;
        AnsiConsole.MarkupLine($"final (last epoch): val accuracy [bold]{f.ValAccuracy:P2}[/]" +
                               (f.ValTop5Accuracy is { } top5 && result.Network.ClassCount > 5 ? $" (top-5 {top5:P2})" : "") +
                               (f.TestAccuracy is null ? "" : ", " + string.Join(", ", f.TestAccuracy.Select(t => $"{Markup.Escape(t.Key)} {t.Value:P2}"))) +
                               $"; {f.TrainSeconds:0.0} s training, {f.ImagesPerSecond:0.0} images/s; " +
                               $"{f.ParametersBackbone:N0} backbone + {f.ParametersAuxiliary:N0} auxiliary parameters");
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(outDir, "metrics.json"))} and {Markup.Escape(Path.Combine(outDir, "model.ckpt"))}");
    }
}
