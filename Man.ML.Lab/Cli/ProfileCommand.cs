// manml-lab profile: per-unit forward and backward times of a network beside their FLOPs, and the peak matrix rate.
using System.CommandLine;
using Man.ML.Lab.Tooling;
using Man.ML.Samples.Cli;
using Man.ML.Diagnostics;
using Man.ML.Models;
using Spectre.Console;

namespace Man.ML.Lab.Cli;

internal static class ProfileCommand
{
    public static Command Create()
    {
        var arch = CommonOptions.Arch();
        var batch = CommonOptions.BatchSize();
        var repeats = new Option<int>("--repeats") { Description = "Timed repeats per unit (median reported).", DefaultValueFactory = _ => 5 };
        var phases = new Option<bool>("--phases")
        {
            Description = "Also time the phases of a whole end-to-end step: zero-grad, forward, backward, non-finite check, optimizer.",
        };
        var localSpec = new Option<string?>("--local")
        {
            Description = "Also time the parts of a local-learning step, summed over its segments, for RULE-kK[-man] (for example " +
                          "dgl-k16-man, infopro-k16-man): units, MAN's copies, heads, backward, EMA update, check, optimizer.",
        };
        var heads = new Option<bool>("--heads")
        {
            Description = "With --local: also time, segment by segment, MAN's copies and the auxiliary head (InfoPro's decoder and " +
                          "classifier apart), forward and backward, with their GFLOP/s.",
        };
        var precision = new Option<string>("--precision")
        {
            Description = "Training precision to profile in: fp32 (default), bf16 or bf16-emulated.", DefaultValueFactory = _ => "fp32",
        };
        var command = new Command("profile", "Per-unit forward and backward time and achieved GFLOP/s of a network's training step.")
        {
            arch, batch, repeats, phases, localSpec, heads, precision,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            TorchSharp.torch.set_num_threads(Environment.ProcessorCount);
            double peak = MatrixRate.MeasureGflops();
            // The network as training builds it (which also tunes the native heap as training does).
            var options = new Man.ML.Training.TrainingOptions
            {
                Architecture = parse.GetValue(arch)!, K = 1, Rule = Man.ML.Local.LearningRule.EndToEnd, Man = null, BatchSize = parse.GetValue(batch),
                Precision = Choices.Parse<TrainingPrecision>(parse.GetValue(precision)!, precision.Name),
            };
            var dataset = Models.Architectures.FamilyOf(options.Architecture) == NetworkFamily.ImageNet
                ? Man.ML.Data.DatasetKind.ImageNet
                : Man.ML.Data.DatasetKind.Cifar10;
            using var local = new Man.ML.Training.Trainer(options).CreateLocalTrainer(dataset.Classes, dataset.ImageSize);
            using var network = local.Network;
            var profiles = UnitProfiler.Profile(network, parse.GetValue(batch), parse.GetValue(repeats), local.Precision);
            var table = new Table().Title($"{network.Architecture}, batch {parse.GetValue(batch)}, {Choices.Name(local.Precision)}; " +
                                          $"peak float32 matrix rate {peak:0.0} GFLOP/s")
                .AddColumns("unit", "forward ms", "backward ms", "GFLOP", "GFLOP/s", "of peak");
            foreach (var p in profiles)
                table.AddRow(Markup.Escape(p.Name), p.ForwardMs.ToString("0.0"), p.BackwardMs.ToString("0.0"), p.StepGflop.ToString("0.00"),
                    p.AchievedGflops.ToString("0.0"), (p.AchievedGflops / peak).ToString("0.00"));
            double f = profiles.Sum(p => p.ForwardMs), b = profiles.Sum(p => p.BackwardMs), g = profiles.Sum(p => p.StepGflop);
            table.AddRow("[bold]all units[/]", f.ToString("0.0"), b.ToString("0.0"), g.ToString("0.00"), (g / ((f + b) / 1000)).ToString("0.0"),
                (g / ((f + b) / 1000) / peak).ToString("0.00"));
            AnsiConsole.Write(table);
            if (parse.GetValue(phases))
            {
                var s = StepProfiler.EndToEnd(local, parse.GetValue(batch), parse.GetValue(repeats));
                var steps = new Table().Title("end-to-end step by phase (median ms)")
                    .AddColumns("zero-grad", "forward + loss", "backward", "non-finite check", "optimizer", "sum", "LocalTrainer.Step");
                steps.AddRow(s.ZeroGradMs.ToString("0.0"), s.ForwardMs.ToString("0.0"), s.BackwardMs.ToString("0.0"), s.CheckMs.ToString("0.0"),
                    s.OptimizerMs.ToString("0.0"),
                    (s.ZeroGradMs + s.ForwardMs + s.BackwardMs + s.CheckMs + s.OptimizerMs).ToString("0.0"), s.StepMs.ToString("0.0"));
                AnsiConsole.Write(steps);
            }
            if (parse.GetValue(localSpec) is { } spec)
            {
                var m = System.Text.RegularExpressions.Regex.Match(spec.Trim().ToLowerInvariant(), @"^(\w+)-k(\d+)(-man)?$");
                if (!m.Success) throw new CliException($"--local '{spec}' is not RULE-kK[-man] (for example dgl-k16-man).");
                var localOptions = options with
                {
                    Rule = Choices.Parse<Man.ML.Local.LearningRule>(m.Groups[1].Value, "--local rule"),
                    K = int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture),
                    Man = m.Groups[3].Success ? new Man.ML.Local.MomentumOptions() : null,
                };
                using var trainer = new Man.ML.Training.Trainer(localOptions).CreateLocalTrainer(dataset.Classes, dataset.ImageSize);
                var p = LocalStepProfiler.Profile(trainer, parse.GetValue(batch), parse.GetValue(repeats));
                double sum = p.ZeroGradMs + p.UnitsForwardMs + p.ManForwardMs + p.HeadForwardMs + p.BackwardMs + p.EmaUpdateMs + p.CheckMs + p.OptimizerMs;
                var parts = new Table().Title($"{spec}: a local step by part, summed over {localOptions.K} segments (median ms)")
                    .AddColumns("zero-grad", "units fwd", "MAN fwd", "heads fwd + loss", "backward", "EMA update", "check", "optimizer", "sum", "Step");
                parts.AddRow(new[]
                    {
                        p.ZeroGradMs, p.UnitsForwardMs, p.ManForwardMs, p.HeadForwardMs, p.BackwardMs, p.EmaUpdateMs, p.CheckMs, p.OptimizerMs, sum, p.StepMs,
                    }
                    .Select(v => v.ToString("0.0")).ToArray());
                AnsiConsole.Write(parts);
                if (parse.GetValue(heads))
                {
                    var rows = HeadProfiler.Profile(trainer, parse.GetValue(batch), parse.GetValue(repeats));
                    var partTable = new Table().Title($"{spec}: auxiliary parts by segment (median ms; peak {peak:0.0} GFLOP/s)")
                        .AddColumns("segment", "part", "input", "forward ms", "backward ms", "GFLOP", "GFLOP/s", "of peak");
                    foreach (var r in rows)
                        partTable.AddRow(r.Segment.ToString(), r.Part, r.Input.ToString(), r.ForwardMs.ToString("0.0"), r.BackwardMs.ToString("0.0"),
                            r.StepGflop.ToString("0.000"), r.AchievedGflops.ToString("0.0"), (r.AchievedGflops / peak).ToString("0.00"));
                    foreach (var group in rows.GroupBy(r => r.Part))
                    {
                        double ms = group.Sum(r => r.ForwardMs + r.BackwardMs), gf = group.Sum(r => r.StepGflop);
                        partTable.AddRow("[bold]all[/]", group.Key, "", group.Sum(r => r.ForwardMs).ToString("0.0"),
                            group.Sum(r => r.BackwardMs).ToString("0.0"),
                            gf.ToString("0.000"), (gf / (ms / 1000)).ToString("0.0"), (gf / (ms / 1000) / peak).ToString("0.00"));
                    }
                    AnsiConsole.Write(partTable);
                }
                trainer.Network.Dispose();
            }
            return 0;
        }));
        return command;
    }
}
