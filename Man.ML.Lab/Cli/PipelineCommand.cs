// manml-lab pipeline: per-segment step times, the stage boundaries they balance to, the cost model's prediction for W
// stages, and (unless --predict-only) the measured images/s of the sequential step at 1 and 2 threads and of the
// pipeline at one thread per stage for every W asked for (at the ends a run would use, and at the measured-alone
// balance when that differs), in alternating rounds.
using System.CommandLine;
using System.Globalization;
using Man.ML.Diagnostics;
using Man.ML.Lab.Tooling;
using Man.ML.Local;
using Man.ML.Samples.Cli;
using Man.ML.Training;
using Spectre.Console;

namespace Man.ML.Lab.Cli;

internal static class PipelineCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var stages = new Option<string>("--stages")
        {
            Description = "Stage counts W to predict (comma-separated); the first is measured.", DefaultValueFactory = _ => "2",
        };
        var links = new Option<string?>("--link-gbps")
        {
            Description = "Link bandwidths (Gbit/s, comma-separated) for the predictions; default: shared memory.",
        };
        var steps = new Option<int>("--steps") { Description = "Steps per measurement.", DefaultValueFactory = _ => 12 };
        var warmup = new Option<int>("--warmup") { Description = "Warm-up steps of the per-segment timing.", DefaultValueFactory = _ => 2 };
        var rounds = new Option<int>("--rounds") { Description = "Alternating rounds of the images/s measurement.", DefaultValueFactory = _ => 2 };
        var predictOnly = new Option<bool>("--predict-only") { Description = "Time the segments and predict; measure no pipeline." };
        var command = new Command("pipeline", "Per-segment times, balanced stages, the pipeline cost model and measured images/s.");
        foreach (var o in model.All) command.Options.Add(o);
        foreach (var o in new Option[] { stages, links, steps, warmup, rounds, predictOnly }) command.Options.Add(o);
        command.SetAction(parse => CliErrors.Run(() =>
        {
            model.ApplyProcessSettings(parse);
            var options = model.ToTrainingOptions(parse) with { PipelineStages = 1 };
            var ws = stages.Parse(parse);
            double?[] bandwidths = parse.GetValue(links) is { } l
                ? l.Split(',').Select(v => (double?)double.Parse(v, CultureInfo.InvariantCulture)).ToArray()
                : new double?[] { null };
            int batch = options.BatchSize, n = parse.GetValue(steps);
            var dataset = options.Dataset;
            using var local = new Trainer(options).CreateLocalTrainer(dataset.Classes, options.ImageSize ?? dataset.ImageSize);
            int k = local.Split.K;

            var segments = PipelineProbe.MeasureSegments(local, batch, Math.Max(3, n / 2), parse.GetValue(warmup));
            var ms = segments.Select(s => s.Milliseconds).ToArray();
            // Every stage but the first also receives the labels and the images (InfoPro's decoders reconstruct them).
            long extra = batch * 8L + batch * 3L * local.Network.InputShape.Height * local.Network.InputShape.Width * 4;
            var sent = segments.Select(s => s.OutputBytes + extra).ToArray();
            var estimates = segments.Select(s => StageBalance.Estimate(s.Cost) * batch / 1e9).ToArray();
            // Least squares of time against matrix FLOPs and activation elements: what one element costs in FLOPs.
            double alpha = FitElementCost(segments);
            var table = new Table().Title($"{options.Architecture} K={k} {Choices.Name(options.Rule)}{(options.Man is null ? "" : "+man")}, batch {batch}, " +
                                          "each segment alone at 1 thread (median)")
                .AddColumns("segment", "ms", "matrix GFLOP", "activation M elements", "estimate (GFLOP-eq.)", "sends KiB");
            for (int j = 0; j < k; j++)
                table.AddRow(j.ToString(CultureInfo.InvariantCulture), F(ms[j], "0.0"), F(segments[j].Cost.StepFlops * (double)batch / 1e9, "0.000"),
                    F(segments[j].Cost.ActivationElements * (double)batch / 1e6, "0.00"), F(estimates[j], "0.000"),
                    j < k - 1 ? F(sent[j] / 1024.0, "0") : "–");
            table.AddRow("all", F(ms.Sum(), "0.0"), F(segments.Sum(s => s.Cost.StepFlops) * (double)batch / 1e9, "0.000"), "", F(estimates.Sum(), "0.000"), "");
            AnsiConsole.Write(table);
            AnsiConsole.WriteLine(FormattableString.Invariant(
                $"fitted cost of an activation element: {alpha:0} matrix FLOPs (StageBalance uses {StageBalance.FlopsPerActivationElement:0})"));

            var prediction = new Table().Title("cost model: one stage per device, stage time = its segments' times + sending its output")
                .AddColumns("W", "link Gbit/s", "ends (measured balance)", "ends (estimated balance)", "stage ms", "step ms", "send ms",
                    $"speed-up ({n}-step epoch)", "at 1,000 steps");
            foreach (int w in ws.Where(w => w <= k))
                foreach (var link in bandwidths)
                {
                    var ends = StageBalance.Ends(ms, w);
                    var estimatedEnds = StageBalance.Ends(estimates, w);
                    var p = PipelineCostModel.Predict(ms, sent, ends, link);
                    prediction.AddRow(w.ToString(CultureInfo.InvariantCulture), link?.ToString(CultureInfo.InvariantCulture) ?? "shared",
                        string.Join(",", ends), string.Join(",", estimatedEnds), string.Join(" | ", p.StageMilliseconds.Select(t => F(t, "0"))),
                        F(p.StepMilliseconds, "0.0"), F(p.SendMilliseconds, "0.0"), F(p.Speedup(n), "0.00") + "×", F(p.Speedup(1000), "0.00") + "×");
                }
            AnsiConsole.Write(prediction);
            if (parse.GetValue(predictOnly)) return 0;

            // For every W of --stages: the pipeline at the ends a run without --stage-ends uses (the estimated balance) and,
            // when they differ, at the ends the segment times measured alone balance to. W = K has one layout; stages
            // beyond the cores share them.
            var pipelines = new List<(string Label, int[] Ends)>();
            foreach (int w in ws.Where(w => w >= 2 && w <= k).Distinct())
            {
                var measuredEnds = StageBalance.Ends(ms, w);
                var defaultEnds = StageBalance.Ends(estimates, w);
                pipelines.Add((w == k ? "every segment a stage" : $"ends {string.Join(",", defaultEnds)}: the default, estimated balance", defaultEnds));
                if (!measuredEnds.SequenceEqual(defaultEnds))
                    pipelines.Add(($"ends {string.Join(",", measuredEnds)}: balanced by segment times measured alone", measuredEnds));
            }
            using var twin = new Trainer(options).CreateLocalTrainer(dataset.Classes, options.ImageSize ?? dataset.ImageSize);
            var each = new List<(double A, double B)>();
            var modes = new List<(string Name, Func<double> Run, int[]? Ends)>
            {
                ("two independent sequential runs at once, 1 thread each", () =>
                {
                    var (a, b) = PipelineProbe.ConcurrentImagesPerSecond(local, twin, batch, n);
                    each.Add((a, b));
                    return a + b;
                }, null),
                ("sequential, 1 thread", () => PipelineProbe.SequentialImagesPerSecond(local, batch, n, 1), null),
                ("sequential, 2 threads", () => PipelineProbe.SequentialImagesPerSecond(local, batch, n, 2), null),
            };
            foreach (var (label, ends) in pipelines)
            {
                var layout = new PipelineLayout(StageBalance.Stages(ends, k), options.PipelineDepth,
                    Enumerable.Repeat(TorchSharp.torch.CPU, ends.Length + 1).ToArray(), 1);
                modes.Add(($"pipelined W={ends.Length + 1} ({label}; depth {options.PipelineDepth}), 1 thread per stage",
                    () => PipelineProbe.PipelinedImagesPerSecond(local, layout, batch, n), ends));
            }
            var results = modes.Select(_ => new List<double>()).ToArray();
            for (int r = 0; r < parse.GetValue(rounds); r++)
                for (int m = 0; m < modes.Count; m++) results[m].Add(modes[m].Run());
            var measured = new Table().Title($"images/s, {parse.GetValue(rounds)} alternating rounds of {n} steps (synthetic data)")
                .AddColumns("mode", "rounds", "mean", "vs sequential at 1 thread", "predicted", "prediction error");
            double baseline = results[1].Average();
            // Calibrated on this run: the segments' shares scaled to the sequential step measured in the same rounds
            // (the machine's speed drifts between the segment timing and the rounds), and the sharing slowdown of two
            // independent one-thread trainings at once against one alone.
            double sequentialMs = batch * 1000 / baseline;
            double scale = sequentialMs / ms.Sum();
            double slowdown = 2 * baseline / results[0].Average();
            var scaled = ms.Select(t => t * scale).ToArray();
            var stageTimes = new List<string>();
            for (int m = 0; m < modes.Count; m++)
            {
                double mean = results[m].Average();
                double? p = null;
                if (modes[m].Ends is { } ends)
                {
                    var calibrated = PipelineCostModel.Predict(scaled, sent, ends, null, slowdown);
                    int stagesOfMode = ends.Length + 1, cores = Environment.ProcessorCount;
                    // Stages beyond the cores share them: a step takes at least the whole step's work over the cores,
                    // and the first batch crosses every stage before the pipeline is full.
                    double step = stagesOfMode <= cores ? calibrated.StepMilliseconds
                        : Math.Max(calibrated.StepMilliseconds, scaled.Sum() * slowdown / cores);
                    double fill = stagesOfMode <= cores ? (stagesOfMode - 1) * step : Math.Max(0, scaled.Sum() - step);
                    p = n * batch / ((n * step + fill) / 1000);
                    stageTimes.Add($"ends {string.Join(",", ends)}: " + string.Join(" | ", calibrated.StageMilliseconds.Select(t => F(t, "0"))) + " ms");
                }
                measured.AddRow(Markup.Escape(modes[m].Name), string.Join(", ", results[m].Select(v => F(v, "0.0"))), F(mean, "0.0"),
                    F(mean / baseline, "0.00") + "×", p is { } q ? F(q, "0.0") : m < 2 ? "(calibration)" : "–",
                    p is { } e ? F(100 * (e - mean) / mean, "+0.0;-0.0") + " %" : "–");
            }
            AnsiConsole.WriteLine(FormattableString.Invariant($"calibration: sequential step {sequentialMs:0} ms against the segments' sum {ms.Sum():0} ms ") +
                FormattableString.Invariant($"(scale {scale:0.000}); sharing slowdown {slowdown:0.000}; stage times {string.Join("; ", stageTimes)}"));
            AnsiConsole.Write(measured);
            // Two threads that wait for each other (the stages, data-parallel ranks) run at twice the slower one's speed.
            var perThread = each.Select(e => $"{F(e.A, "0.0")} + {F(e.B, "0.0")}");
            AnsiConsole.WriteLine("two independent runs, each thread (images/s): " + string.Join(", ", perThread) +
                FormattableString.Invariant($"; twice the slower: {2 * each.Average(e => Math.Min(e.A, e.B)) / baseline:0.00}×") +
                " the sequential step at 1 thread");
            return 0;
        }));
        return command;
    }

    private static int[] Parse(this Option<string> option, ParseResult parse) => parse.GetValue(option)!.Split(',')
        .Select(v => int.TryParse(v.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int w) && w >= 1 ? w
            : throw new CliException($"{option.Name} must be stage counts separated by commas (got '{parse.GetValue(option)}').")).ToArray();

    private static string F(double value, string format) => value.ToString(format, CultureInfo.InvariantCulture);

    // t ≈ a·flops + b·elements, least squares without intercept; returns b / a.
    private static double FitElementCost(IReadOnlyList<MeasuredSegment> segments)
    {
        double ff = 0, fe = 0, ee = 0, ft = 0, et = 0;
        foreach (var s in segments)
        {
            double f = s.Cost.StepFlops, e = s.Cost.ActivationElements, t = s.Milliseconds;
            ff += f * f; fe += f * e; ee += e * e; ft += f * t; et += e * t;
        }
        double det = ff * ee - fe * fe;
        double a = (ft * ee - et * fe) / det, b = (ff * et - fe * ft) / det;
        return b / a;
    }
}
