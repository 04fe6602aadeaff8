// manml-lab bench: training memory, speed and their floors for a set of configurations, each measured in child processes
// (memory with MALLOC_MMAP_THRESHOLD_=65536, time without it), written as DIR/bench.json, DIR/bench.md and PNG plots.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Man.ML.Lab.Tooling;
using Man.ML.Samples.Cli;
using Man.ML.Samples.Tooling;
using Man.ML.Diagnostics;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using Spectre.Console;

namespace Man.ML.Lab.Cli;

internal static partial class BenchCommand
{
    /// <summary>One configuration: architecture, K, rule, MAN and, optionally, a split table (name suffix @TABLE).</summary>
    internal sealed record Config(string Arch, int K, LearningRule Rule, bool Man, SplitTable? Split = null)
    {
        public string Name => $"{Arch}-k{K}-{Choices.Name(Rule)}{(Man ? "-man" : "")}{(Split is { } t ? "@" + Choices.Name(t) : "")}";

        /// <summary>The training options the configuration stands for (the same the measuring child processes resolve).</summary>
        public TrainingOptions Options(int batch) => new()
        {
            Architecture = Arch, K = K, Rule = Rule, BatchSize = batch, SplitTable = Split,
            Man = Man ? new MomentumOptions() : null,
            RuleSettings = Rule == LearningRule.InfoPro && !ImageNet
                ? new RuleSettings { InfoPro = new InfoProSettings { Lambdas = InfoProLambdas.Parse(BothInfoProTerms), Schedule = LambdaSchedule.ModuleIndex } }
                : new RuleSettings(),
        };

        // Both InfoPro terms everywhere, so that every configuration pays for its decoder and classifier (ImageNet's
        // default weights, 5 and 0.75 or 1 on every segment, already do).
        private const string BothInfoProTerms = "5,0.5,1,0.5";

        public bool ImageNet => Architectures.FamilyOf(Arch) == NetworkFamily.ImageNet;

        public static Config Parse(string name)
        {
            var m = ConfigPattern().Match(name.Trim().ToLowerInvariant());
            if (!m.Success)
                throw new CliException($"--configs entry '{name}' is not ARCH-kK-RULE[-man][@TABLE] " +
                                       "(for example resnet32-k16-dgl-man or resnet101-k4-infopro-man@manpp).");
            var config = new Config(m.Groups[1].Value, int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture),
                Choices.Parse<LearningRule>(m.Groups[3].Value, "rule"), m.Groups[4].Success,
                m.Groups[5].Success ? Choices.Parse<SplitTable>(m.Groups[5].Value, "split table") : null);
            try { config.Options(128).Validate(); }
            catch (InvalidOptionException e) { throw new CliException($"--configs entry '{name}': {e.Message}"); }
            return config;
        }

        /// <summary>Child-process arguments describing the configuration.</summary>
        public IEnumerable<string> Arguments(int batch, int? imageSize)
        {
            var args = new List<string>
            {
                "--arch", Arch, "--k", K.ToString(CultureInfo.InvariantCulture), "--rule", Choices.Name(Rule),
                "--batch-size", batch.ToString(CultureInfo.InvariantCulture),
            };
            args.Add(Man ? "--man" : "--no-man");
            if (Split is { } table) args.AddRange(new[] { "--split", Choices.Name(table) });
            if (imageSize is int size) args.AddRange(new[] { "--image-size", size.ToString(CultureInfo.InvariantCulture) });
            if (Rule == LearningRule.InfoPro && !ImageNet)
                args.AddRange(new[] { "--lambda", BothInfoProTerms, "--lambda-schedule", Choices.Name(LambdaSchedule.ModuleIndex) });
            return args;
        }
    }

    [GeneratedRegex(@"^(resnet\d+|resnext\d+_\d+x\d+d|vgg\d+_bn)-k(\d+)-(e2e|dgl|infopro|predsim)(-man)?(?:@(man|manpp|infopro|dgl|balanced))?$")]
    private static partial Regex ConfigPattern();

    /// <summary>
    /// The ImageNet memory table (paper's Table 3): ResNet-101, ResNet-152 and ResNeXt-101 32x8d, E2E against InfoPro at
    /// K = 2 (MAN's table) and K = 4 (MAN++'s table, MAN's first-commit table and the balancing rule), each with and without MAN.
    /// </summary>
    internal static IReadOnlyList<Config> ImageNetTable() =>
        new[] { "resnet101", "resnet152", "resnext101_32x8d" }.SelectMany(arch => new[]
        {
            new Config(arch, 1, LearningRule.EndToEnd, false),
            new Config(arch, 2, LearningRule.InfoPro, false), new Config(arch, 2, LearningRule.InfoPro, true),
            new Config(arch, 4, LearningRule.InfoPro, false), new Config(arch, 4, LearningRule.InfoPro, true),
            new Config(arch, 4, LearningRule.InfoPro, false, SplitTable.Man), new Config(arch, 4, LearningRule.InfoPro, true, SplitTable.Man),
            new Config(arch, 4, LearningRule.InfoPro, false, SplitTable.Balanced), new Config(arch, 4, LearningRule.InfoPro, true, SplitTable.Balanced),
        }).ToList();

    /// <summary>ResNet-32 at K ∈ {1, 2, 4, 8, 16} and ResNet-110 at K ∈ {1, 32, 55}; every local K for every rule, with and without MAN.</summary>
    internal static IReadOnlyList<Config> Defaults()
    {
        var list = new List<Config>();
        foreach (var (arch, ks) in new[] { ("resnet32", new[] { 2, 4, 8, 16 }), ("resnet110", new[] { 32, 55 }) })
        {
            list.Add(new Config(arch, 1, LearningRule.EndToEnd, false));
            foreach (int k in ks)
                foreach (var rule in new[] { LearningRule.Dgl, LearningRule.InfoPro, LearningRule.PredSim })
                    foreach (bool man in new[] { false, true })
                        list.Add(new Config(arch, k, rule, man));
        }
        return list;
    }

    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "Output folder.", Required = true };
        var configs = new Option<string?>("--configs")
        {
            Description = "Comma-separated configurations ARCH-kK-RULE[-man][@TABLE], or 'imagenet' for the ImageNet memory table " +
                          "(default: the CIFAR set).",
        };
        var memoryOnly = new Option<bool>("--memory-only") { Description = "Measure peak memory only (no timing child process)." };
        var imageSize = new Option<int?>("--image-size") { Description = "Input side (default: 32 for CIFAR networks, 224 for ImageNet ones)." };
        var batch = CommonOptions.BatchSize();
        var steps = new Option<int>("--steps") { Description = "Timed steps per configuration (after 1 warm-up step).", DefaultValueFactory = _ => 3 };
        var device = CommonOptions.Device();
        var precisions = new Option<string>("--precisions")
        {
            Description = "Comma-separated training precisions to measure every configuration in, one after the other " +
                          "(fp32, bf16, bf16-emulated; for example fp32,bf16). Default fp32.",
            DefaultValueFactory = _ => "fp32",
        };
        var command = new Command("bench", "Measure training memory, step time and their floors for a set of configurations.")
        {
            output, configs, batch, steps, device, imageSize, memoryOnly, precisions,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var outDir = parse.GetValue(output)!;
            return OutputFolders.Write(parse, outDir, output.Name, () =>
            {
                var list = parse.GetValue(configs) switch
                {
                    null => Defaults().ToList(),
                    "imagenet" => ImageNetTable().ToList(),
                    var text => text.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(Config.Parse).ToList(),
                };
                int? size = parse.GetValue(imageSize);
                if (size is < 32) throw new CliException($"--image-size must be at least 32 (got {size}).");
                int b = parse.GetValue(batch), n = parse.GetValue(steps);
                string dev = parse.GetValue(device)!;
                if (b < 2 || n < 1) throw new CliException("--batch-size must be at least 2 and --steps at least 1.");
                if (dev != "cpu" && !TorchSharp.torch.cuda.is_available()) throw new CliException($"--device {dev}: CUDA is not available here.");
                var precisionList = parse.GetValue(precisions)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                    .Select(p => Choices.Parse<TrainingPrecision>(p, precisions.Name)).Distinct().ToList();
                if (precisionList.Count == 0) throw new CliException("--precisions names no precision.");
                foreach (var p in precisionList) BFloat16Support.Resolve(p, Devices.Resolve(dev).type, precisions.Name);
                TorchSharp.torch.set_num_threads(Environment.ProcessorCount);
                double peak = MatrixRate.MeasureGflops(Devices.Resolve(dev));
                var commandLine = "manml-lab bench " + string.Join(' ', Environment.GetCommandLineArgs().Skip(1).SkipWhile(a => a != "bench").Skip(1));
                AnsiConsole.MarkupLine($"peak float32 matrix rate of this libtorch: [bold]{peak:0.0} GFLOP/s[/] " +
                                       $"({TorchSharp.torch.get_num_threads()} threads); {list.Count} configurations");

                var results = new List<JsonObject>();
                foreach (var config in list)
                    foreach (var precision in precisionList) // one precision after the other, configuration by configuration
                    {
                        var clock = Stopwatch.StartNew();
                        var result = Measure(config, b, parse.GetValue(memoryOnly) ? 0 : n, dev, peak, size, precision);
                        results.Add(result);
                        AnsiConsole.MarkupLine(Markup.Escape($"{result["name"]}: {Summary(result)} ({clock.Elapsed.TotalSeconds:0} s)"));
                    }
                var report = new JsonObject
                {
                    ["command"] = commandLine,
                    ["date"] = DateTime.UtcNow.ToString("u", CultureInfo.InvariantCulture),
                    ["device"] = dev,
                    ["threads"] = TorchSharp.torch.get_num_threads(),
                    ["peak_matrix_gflops"] = Math.Round(peak, 1),
                    ["batch_size"] = b,
                    ["timed_steps"] = parse.GetValue(memoryOnly) ? 0 : n,
                    ["configurations"] = new JsonArray(results.ToArray<JsonNode?>()),
                };
                AtomicFile.WriteText(Path.Combine(outDir, "bench.json"), report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                AtomicFile.WriteText(Path.Combine(outDir, "bench.md"), Markdown(report, results));
                Plot(outDir, results.Where(IsFloat32).ToList());
                AnsiConsole.MarkupLine(Markup.Escape($"wrote {Path.Combine(outDir, "bench.json")}, bench.md and plots"));
                return 0;
            });
        }));
        return command;
    }

    private static string Summary(JsonObject r) => r["error"] is { } e
        ? $"failed: {e}"
        : r["step_ms_median"] is null
            ? FormattableString.Invariant($"peak {r["peak_memory_mb"]} MiB (floor {r["activation_floor_mb"]})")
            : FormattableString.Invariant($"peak {r["peak_memory_mb"]} MiB (floor {r["activation_floor_mb"]}), {r["step_ms_median"]} ms/step, ") +
              FormattableString.Invariant($"{r["images_per_second"]} img/s, {r["achieved_gflops"]} GFLOP/s");

    private static JsonObject Measure(Config config, int batch, int steps, string device, double peak, int? imageSize,
        TrainingPrecision precision = TrainingPrecision.Float32)
    {
        int side = imageSize ?? (config.ImageNet ? 224 : 32);
        var result = new JsonObject
        {
            ["name"] = config.Name + (precision == TrainingPrecision.Float32 ? "" : ":" + Choices.Name(precision)),
            ["precision"] = Choices.Name(precision),
            ["arch"] = config.Arch, ["k"] = config.K, ["rule"] = Choices.Name(config.Rule), ["man"] = config.Man,
            ["batch_size"] = batch,
            ["image_size"] = side,
        };
        try
        {
            var cost = Cost(config, batch, side, out string split);
            result["split"] = split;
            var common = config.Arguments(batch, imageSize).Concat(new[] { "--device", device, "--precision", Choices.Name(precision) }).ToList();
            var memory = RunChild(new[] { "measure-memory" }.Concat(common).Concat(new[] { "--steps", "1", "--warmup", "1" }),
                device == "cpu"
                    ? new Dictionary<string, string> { ["MALLOC_MMAP_THRESHOLD_"] = "65536" }
                    // NVML sees the whole device; without caching, PyTorch's usage tracks live tensors.
                    : new Dictionary<string, string> { ["PYTORCH_NO_CUDA_MEMORY_CACHING"] = "1" });
            double peakMemory = memory["peak_memory_mb"]!.GetValue<double>();
            double floor = cost.ActivationFloorBytes / 1048576.0;
            result["peak_memory_mb"] = Math.Round(peakMemory, 1);
            result["baseline_mb"] = memory["baseline_mb"]!.GetValue<double>();
            result["activation_floor_mb"] = Math.Round(floor, 1);
            result["man_floor_mb"] = Math.Round(cost.ManFloorBytes / 1048576.0, 1);
            result["peak_over_floor"] = Math.Round(peakMemory / floor, 2);
            result["gflops_per_step"] = Math.Round(cost.StepGflops, 2);
            if (steps == 0) return result; // --memory-only
            var speed = RunChild(
                new[] { "measure-speed" }.Concat(common).Concat(new[] { "--steps", steps.ToString(CultureInfo.InvariantCulture), "--warmup", "1" }), null);
            var times = speed["step_ms"]!.AsArray().Select(t => t!.GetValue<double>()).OrderBy(t => t).ToArray();
            double median = times[times.Length / 2];
            result["step_ms_median"] = Math.Round(median, 1);
            result["step_ms_min"] = Math.Round(times[0], 1);
            result["step_ms_max"] = Math.Round(times[^1], 1);
            result["images_per_second"] = Math.Round(batch / (median / 1000), 1);
            result["achieved_gflops"] = Math.Round(cost.StepGflops / (median / 1000), 1);
            result["achieved_over_peak"] = Math.Round(cost.StepGflops / (median / 1000) / peak, 3);
        }
        catch (Exception e) when (e is CliException or ArgumentException or InvalidOperationException or JsonException)
        {
            result["error"] = e.Message.ReplaceLineEndings(" ");
        }
        return result;
    }

    private static LearningRule RuleOf(JsonNode? row) => Choices.Parse<LearningRule>(row!["rule"]!.GetValue<string>(), "rule");

    private static TrainingCostReport Cost(Config config, int batch, int imageSize, out string split)
    {
        var options = config.Options(batch);
        using var local = new Trainer(options).CreateLocalTrainer(config.ImageNet ? 1000 : 10, imageSize);
        split = (local.Split.Table is { } table ? $"{table}: " : "balanced: ") + local.Split.Describe(local.Network);
        var report = TrainingCost.Compute(local, batch);
        local.Network.Dispose();
        return report;
    }

    private static JsonObject RunChild(IEnumerable<string> args, IDictionary<string, string>? environment)
    {
        var info = SelfProcess.StartInfo(args);
        if (environment is not null) foreach (var (k, v) in environment) info.Environment[k] = v;
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(15)))
        {
            process.Kill(entireProcessTree: true);
            throw new InvalidOperationException($"'{string.Join(' ', args)}' did not finish in 15 minutes.");
        }
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"'{string.Join(' ', args)}' failed with exit code {process.ExitCode}" +
                (process.ExitCode > 128 ? $" (killed by signal {process.ExitCode - 128})" : "") + $": {stderr.Result.Trim()}");
        var line = stdout.Result.Trim().Split('\n')[^1];
        return JsonNode.Parse(line)!.AsObject();
    }

    private static string Markdown(JsonObject report, IReadOnlyList<JsonObject> results)
    {
        var md = new StringBuilder();
        md.AppendLine("# manml-lab bench");
        md.AppendLine();
        md.AppendLine(FormattableString.Invariant($"`{report["command"]}` on {report["date"]}: device {report["device"]}, ") +
            FormattableString.Invariant($"{report["threads"]} threads, batch {report["batch_size"]}, ") +
            (report["timed_steps"]!.GetValue<int>() == 0
                ? "memory only (no timing); "
                : FormattableString.Invariant($"median of {report["timed_steps"]} timed steps after 1 warm-up step; ")) +
            "memory: 1 measured step after 1 warm-up step.");
        md.AppendLine(FormattableString.Invariant(
            $"Peak float32 matrix rate of this libtorch, measured in the same run: **{report["peak_matrix_gflops"]} GFLOP/s**."));
        md.AppendLine();
        md.AppendLine((report["device"]!.GetValue<string>() == "cpu"
            ? "Peak memory: VmHWM minus VmRSS before the measured steps, in a child process with `MALLOC_MMAP_THRESHOLD_=65536`."
            : "Peak memory: device memory sampled through NVML every millisecond during the measured steps minus the use before them, " +
              "in a child process with `PYTORCH_NO_CUDA_MEMORY_CACHING=1` (so the caching allocator keeps nothing back and the figure " +
              "tracks live tensors; with caching, reserved blocks would count).") +
            " Floor: float32 activations the largest segment (with its auxiliary head and MAN's copies) keeps for backward, from layer " +
            "shapes. GFLOP: convolution and linear layers, forward + both gradients (EMA copies: forward + input gradient).");
        md.AppendLine();
        md.AppendLine(TableRow("name", "arch", "K", "rule", "MAN", "peak MiB", "floor MiB", "peak/floor", "MAN floor MiB", "step ms (median)", "min", "max",
            "images/s", "GFLOP/step", "GFLOP/s", "of peak"));
        md.AppendLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var r in results)
        {
            if (r["error"] is { } e)
            {
                md.AppendLine($"| {r["name"]} | {r["arch"]} | {r["k"]} | {r["rule"]} | {r["man"]} | failed: {e} |||||||||||");
                continue;
            }
            md.AppendLine(TableRow(r["name"], r["arch"], r["k"], r["rule"], (bool)r["man"]! ? "yes" : "no", r["peak_memory_mb"], r["activation_floor_mb"],
                r["peak_over_floor"], r["man_floor_mb"], r["step_ms_median"], r["step_ms_min"], r["step_ms_max"], r["images_per_second"],
                r["gflops_per_step"], r["achieved_gflops"], r["achieved_over_peak"]));
        }
        // The paper's ratios are float32's; bf16 rows are set against their float32 twins in a table of their own.
        var float32 = results.Where(r => r["error"] is null && IsFloat32(r)).ToList();
        Targets(md, report, float32);
        MemoryTable(md, float32);
        PrecisionTable(md, results.Where(r => r["error"] is null).ToList());
        return md.ToString();
    }

    private static bool IsFloat32(JsonObject r) => r["precision"] is not { } p || p.GetValue<string>() == Choices.Name(TrainingPrecision.Float32);

    // Each configuration measured in another precision beside its float32 row: images/s and peak memory as ratios.
    private static void PrecisionTable(StringBuilder md, IReadOnlyList<JsonObject> ok)
    {
        var others = ok.Where(r => !IsFloat32(r)).ToList();
        if (others.Count == 0) return;
        string F(JsonNode? v) => v is null ? "-" : v.GetValue<double>().ToString("0.00", CultureInfo.InvariantCulture);
        md.AppendLine();
        md.AppendLine("## Precisions (each against the same configuration in float32, measured in this run)");
        md.AppendLine();
        md.AppendLine("| configuration | precision | images/s fp32 | images/s | speed-up | peak MiB fp32 | peak MiB | memory ratio |");
        md.AppendLine("|---|---|---|---|---|---|---|---|");
        foreach (var r in others)
        {
            string name = r["name"]!.GetValue<string>(), plain = name[..name.LastIndexOf(':')];
            var f = ok.FirstOrDefault(x => IsFloat32(x) && x["name"]!.GetValue<string>() == plain);
            double? Ratio(string key) => f?[key] is { } a && r[key] is { } b ? b.GetValue<double>() / a.GetValue<double>() : null;
            md.AppendLine($"| {plain} | {r["precision"]} | {F(f?["images_per_second"])} | {F(r["images_per_second"])} | " +
                          $"{(Ratio("images_per_second") is { } s ? F(s) + "×" : "-")} | {F(f?["peak_memory_mb"])} | {F(r["peak_memory_mb"])} | " +
                          $"{(Ratio("peak_memory_mb") is { } m ? F(m) + "×" : "-")} |");
        }
    }

    // The ratios docs/BENCHMARKS.md states its memory and speed claims in, each beside the limit the claim sets (only
    // where the configurations a ratio needs were measured).
    private static void Targets(StringBuilder md, JsonObject report, IReadOnlyList<JsonObject> ok)
    {
        string F(double v) => v.ToString("0.00", CultureInfo.InvariantCulture);
        JsonObject? Find(string name) => ok.FirstOrDefault(r => r["name"]!.GetValue<string>() == name);
        double Get(JsonObject r, string key) => r[key]!.GetValue<double>();
        md.AppendLine();
        md.AppendLine("## Targets (measured ratios)");
        md.AppendLine();
        md.AppendLine("| target | measured | limit | met |");
        md.AppendLine("|---|---|---|---|");
        void Row(string what, double value, string limit, bool met) => md.AppendLine($"| {what} | {F(value)} | {limit} | {(met ? "yes" : "**no**")} |");
        if (Find("resnet32-k1-e2e") is { } e2e)
        {
            if (Find("resnet32-k16-dgl") is { } dgl)
            {
                double r = Get(dgl, "peak_memory_mb") / Get(e2e, "peak_memory_mb");
                Row("ResNet-32 DGL K=16 peak / K=1 peak", r, "≤ 0.45", r <= 0.45);
            }
            if (Find("resnet32-k16-dgl-man") is { } man)
            {
                double r = Get(man, "peak_memory_mb") / Get(e2e, "peak_memory_mb");
                Row("ResNet-32 DGL+MAN K=16 peak / K=1 peak", r, "≤ 0.65", r <= 0.65);
            }
        }
        if (ok.Count > 0)
        {
            var worst = ok.MaxBy(r => Get(r, "peak_over_floor"))!;
            Row($"largest peak / activation floor ({worst["name"]})", Get(worst, "peak_over_floor"), "≤ 1.5", Get(worst, "peak_over_floor") <= 1.5);
        }
        double peak = report["peak_matrix_gflops"]!.GetValue<double>();
        foreach (var e2eRow in ok.Where(r => RuleOf(r) == LearningRule.EndToEnd && r["achieved_gflops"] is not null))
        {
            double r = Get(e2eRow, "achieved_gflops") / peak;
            Row($"{e2eRow["arch"]} E2E achieved GFLOP/s / peak matrix rate", r, "≥ 0.7", r >= 0.7);
            var locals = ok.Where(x => x["arch"]!.ToString() == e2eRow["arch"]!.ToString() && RuleOf(x) != LearningRule.EndToEnd
                                       && x["achieved_gflops"] is not null).ToList();
            if (locals.Count == 0) continue;
            var slowest = locals.MinBy(x => Get(x, "achieved_gflops"))!;
            double ratio = Get(slowest, "achieved_gflops") / Get(e2eRow, "achieved_gflops");
            Row($"{e2eRow["arch"]} lowest local achieved GFLOP/s / K=1's ({slowest["name"]})", ratio, "≥ 0.9", ratio >= 0.9);
        }
        var pairs = ok.Where(r => (bool)r["man"]!).Select(m => (Man: m, Plain: Find(PlainName(m["name"]!.GetValue<string>()))))
            .Where(p => p.Plain is not null).ToList();
        if (pairs.Count == 0) return;
        md.AppendLine();
        md.AppendLine("MAN's memory overhead at every K beside what its copies' activations alone account for (floor of the largest segment's copies):");
        md.AppendLine();
        md.AppendLine("| configuration | peak without MAN MiB | peak with MAN MiB | overhead MiB | copies' activations MiB | step time ratio |");
        md.AppendLine("|---|---|---|---|---|---|");
        foreach (var (m, p) in pairs)
            md.AppendLine(TableRow(m["name"], Get(p!, "peak_memory_mb"), Get(m, "peak_memory_mb"),
                (Get(m, "peak_memory_mb") - Get(p!, "peak_memory_mb")).ToString("0.0", CultureInfo.InvariantCulture), Get(m, "man_floor_mb"),
                m["step_ms_median"] is null || p!["step_ms_median"] is null
                    ? "—"
                    : (Get(m, "step_ms_median") / Get(p!, "step_ms_median")).ToString("0.00", CultureInfo.InvariantCulture)));
    }

    // A Markdown table row; numbers are written as JSON writes them (invariant culture).
    private static string TableRow(params object?[] cells) =>
        "| " + string.Join(" | ", cells.Select(c => Convert.ToString(c, CultureInfo.InvariantCulture))) + " |";

    // The name of a MAN configuration's counterpart without MAN.
    private static string PlainName(string name) => name.Replace("-man@", "@", StringComparison.Ordinal) is var n && n != name ? n : name[..^"-man".Length];

    // The paper's Table 3: relative GPU memory saving against E2E, InfoPro alone and InfoPro*(= + MAN), by (arch, K).
    private static readonly Dictionary<(string Arch, int K, bool Man), double> PaperSavings = new()
    {
        [("resnet101", 2, false)] = 38.8, [("resnet101", 2, true)] = 37.5, [("resnet101", 4, false)] = 47.3, [("resnet101", 4, true)] = 45.8,
        [("resnet152", 2, false)] = 40.9, [("resnet152", 2, true)] = 39.4, [("resnet152", 4, false)] = 48.7, [("resnet152", 4, true)] = 47.1,
        [("resnext101_32x8d", 2, false)] = 39.9, [("resnext101_32x8d", 2, true)] = 38.9,
        [("resnext101_32x8d", 4, false)] = 46.7, [("resnext101_32x8d", 4, true)] = 45.5,
    };

    // Savings of every local configuration against its architecture's E2E run, beside Table 3, and MAN's increase over
    // the same configuration without MAN; for InfoPro + MAN, the savings set against the limits docs/BENCHMARKS.md states.
    private static void MemoryTable(StringBuilder md, IReadOnlyList<JsonObject> ok)
    {
        var e2eRows = ok.Where(r => RuleOf(r) == LearningRule.EndToEnd && Architectures.FamilyOf(r["arch"]!.GetValue<string>()) == NetworkFamily.ImageNet)
            .ToList();
        if (e2eRows.Count == 0) return;
        double Get(JsonObject r, string key) => r[key]!.GetValue<double>();
        string Pct(double v) => v.ToString("0.0", CultureInfo.InvariantCulture) + " %";
        md.AppendLine();
        md.AppendLine("## ImageNet memory table (beside the paper's Table 3)");
        md.AppendLine();
        md.AppendLine("Saving = 1 − peak / E2E peak, peak above the pre-step baseline (activations, gradients and workspace of a step); " +
                      "'total' adds the baseline (weights, optimizer state, runtime) to both. Table 3 measured total GPU memory at batch 128 per GPU.");
        md.AppendLine();
        md.AppendLine("| arch | configuration | split | peak MiB | saving | total MiB | total saving | Table 3 saving | MAN over no MAN |");
        md.AppendLine("|---|---|---|---|---|---|---|---|---|");
        var targets = new List<(string What, double Value, string Limit, bool Met)>();
        foreach (var e2e in e2eRows)
        {
            string arch = e2e["arch"]!.GetValue<string>();
            double e2ePeak = Get(e2e, "peak_memory_mb"), e2eTotal = e2ePeak + Get(e2e, "baseline_mb");
            md.AppendLine(FormattableString.Invariant($"| {arch} | E2E | — | {e2ePeak} | — | {e2eTotal:0.0} | — | — | — |"));
            foreach (var r in ok.Where(r => r["arch"]!.GetValue<string>() == arch && RuleOf(r) != LearningRule.EndToEnd))
            {
                int k = r["k"]!.GetValue<int>();
                bool man = (bool)r["man"]!;
                double saving = 100 * (1 - Get(r, "peak_memory_mb") / e2ePeak);
                double total = Get(r, "peak_memory_mb") + Get(r, "baseline_mb");
                var plain = man ? ok.FirstOrDefault(p => p["name"]!.GetValue<string>() == PlainName(r["name"]!.GetValue<string>())) : null;
                double? increase = plain is null ? null : 100 * (Get(r, "peak_memory_mb") / Get(plain, "peak_memory_mb") - 1);
                string paper = RuleOf(r) == LearningRule.InfoPro && PaperSavings.TryGetValue((arch, k, man), out var p0) ? Pct(p0) : "—";
                md.AppendLine(TableRow(arch, FormattableString.Invariant($"{r["rule"]} K={k}{(man ? " + MAN" : "")}"),
                    r["split"]!.GetValue<string>().Replace("|", "\\|"), r["peak_memory_mb"], Pct(saving),
                    total.ToString("0.0", CultureInfo.InvariantCulture), Pct(100 * (1 - total / e2eTotal)), paper,
                    increase is { } inc ? (inc >= 0 ? "+" : "") + Pct(inc) : "—"));
                if (RuleOf(r) != LearningRule.InfoPro || !man) continue;
                string name = r["name"]!.GetValue<string>();
                if (k == 2) targets.Add(($"{name} saving", saving, "≥ 37 %", saving >= 37));
                if (k == 4) targets.Add(($"{name} saving", saving, "≥ 45 %", saving >= 45));
                if (increase is { } i) targets.Add(($"{name}: MAN over InfoPro alone", i, "≤ 3 %", i <= 3));
            }
        }
        if (targets.Count == 0) return;
        md.AppendLine();
        md.AppendLine("| target | measured | limit | met |");
        md.AppendLine("|---|---|---|---|");
        foreach (var (what, value, limit, met) in targets)
            md.AppendLine(FormattableString.Invariant($"| {what} | {Pct(value)} | {limit} | {(met ? "yes" : "**no**")} |"));
    }

    private static void Plot(string outDir, IReadOnlyList<JsonObject> results)
    {
        var ok = results.Where(r => r["error"] is null).ToList();
        foreach (var arch in ok.Select(r => r["arch"]!.GetValue<string>()).Distinct())
        {
            var rows = ok.Where(r => r["arch"]!.GetValue<string>() == arch).ToList();
            var e2e = rows.FirstOrDefault(r => RuleOf(r) == LearningRule.EndToEnd);
            var groups = rows.Where(r => RuleOf(r) != LearningRule.EndToEnd)
                .GroupBy(r => $"{r["rule"]}{((bool)r["man"]! ? " + MAN" : "")}" +
                              (r["name"]!.GetValue<string>().Split('@') is { Length: 2 } at ? " @" + at[1] : "")).ToList();
            ChartSeries Series(string name, IEnumerable<JsonObject> points, string key) => new(name,
                points.Select(p => (double)p["k"]!.GetValue<int>()).ToList(), points.Select(p => p[key]!.GetValue<double>()).ToList());
            IEnumerable<JsonObject> WithE2e(IEnumerable<JsonObject> g) => (e2e is null ? g : g.Prepend(e2e)).OrderBy(p => p["k"]!.GetValue<int>());
            if (groups.Count == 0) continue;
            Charts.Line(Path.Combine(outDir, $"memory-vs-k-{arch}.png"), $"{arch}: peak training memory (K = 1 is E2E)", "K (segments)", "MiB",
                groups.Select(g => Series(g.Key, WithE2e(g), "peak_memory_mb")).ToList(), logX: true);
            if (rows.All(r => r["images_per_second"] is not null))
                Charts.Line(Path.Combine(outDir, $"throughput-vs-k-{arch}.png"), $"{arch}: training throughput (K = 1 is E2E)", "K (segments)", "images/s",
                groups.Select(g => Series(g.Key, WithE2e(g), "images_per_second")).ToList(), logX: true);
        }
        // MAN's overhead per rule: MAN / no MAN, memory and time, averaged over the local configurations measured both ways.
        if (ok.Any(r => r["step_ms_median"] is null)) return;
        var pairs = ok.Where(r => (bool)r["man"]!)
            .Select(m => (Man: m, Plain: ok.FirstOrDefault(p => !(bool)p["man"]! && p["arch"]!.ToString() == m["arch"]!.ToString()
                                                                && p["k"]!.GetValue<int>() == m["k"]!.GetValue<int>()
                                                                && p["rule"]!.ToString() == m["rule"]!.ToString())))
            .Where(p => p.Plain is not null).ToList();
        if (pairs.Count == 0) return;
        var rules = pairs.Select(p => p.Man["rule"]!.GetValue<string>()).Distinct().ToList();
        double Mean(string rule, string key) => pairs.Where(p => p.Man["rule"]!.GetValue<string>() == rule)
            .Average(p => p.Man[key]!.GetValue<double>() / p.Plain![key]!.GetValue<double>());
        Charts.Bars(Path.Combine(outDir, "man-overhead.png"), "MAN's overhead (MAN / without MAN, mean over K)", "ratio", rules,
            new (string, IReadOnlyList<double>)[]
            {
                ("peak memory", rules.Select(r => Mean(r, "peak_memory_mb")).ToList()),
                ("step time", rules.Select(r => Mean(r, "step_ms_median")).ToList()),
            });
    }
}
