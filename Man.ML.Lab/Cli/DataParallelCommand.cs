// manml-lab data-parallel: what data-parallel training over MPI gives. Measured (unless --predict-only): the images/s of
// one process at 1 and at 2 threads and of R ranks at 1 thread each (mpirun on this machine), each a `manml train` of
// its own on the bundled sample, in alternating rounds, at the same global batch; the second epoch is timed (the first
// warms the allocator), and the ranks' gradient exchange is read from metrics.json. Predicted: the cost model for R
// hosts at the given link bandwidths, from this machine's per-segment times at one thread.
using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Man.ML.Diagnostics;
using Man.ML.Lab.Tooling;
using Man.ML.Samples.Cli;
using Man.ML.Training;
using Spectre.Console;

namespace Man.ML.Lab.Cli;

internal static class DataParallelCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var ranks = new Option<int>("--ranks") { Description = "R, the ranks of the measured job (mpirun -np R on this machine).",
            DefaultValueFactory = _ => 2 };
        var hosts = new Option<string>("--hosts") { Description = "Host counts to predict (comma-separated).", DefaultValueFactory = _ => "4,8,16" };
        var links = new Option<string>("--link-gbps") { Description = "Link bandwidths to predict (Gbit/s, comma-separated).",
            DefaultValueFactory = _ => "10,100" };
        var trainLimit = new Option<int>("--train-limit") { Description = "Images of the bundled sample each measured epoch trains on.",
            DefaultValueFactory = _ => 2048 };
        var rounds = new Option<int>("--rounds") { Description = "Alternating rounds of the measurement.", DefaultValueFactory = _ => 2 };
        var steps = new Option<int>("--steps") { Description = "Steps of the per-segment timing.", DefaultValueFactory = _ => 4 };
        var predictOnly = new Option<bool>("--predict-only") { Description = "Time the segments and predict; start no job." };
        var command = new Command("data-parallel", "Data-parallel training over MPI: measured images/s and communication, and the cost model for R hosts.");
        foreach (var o in model.All) command.Options.Add(o);
        foreach (var o in new Option[] { ranks, hosts, links, trainLimit, rounds, steps, predictOnly }) command.Options.Add(o);
        var own = new HashSet<string> { ranks.Name, hosts.Name, links.Name, trainLimit.Name, rounds.Name, steps.Name, predictOnly.Name, "--threads",
            "--batch-size" };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            model.ApplyProcessSettings(parse);
            var options = model.ToTrainingOptions(parse) with { Distributed = Distributed.DistributedMode.None };
            int r = parse.GetValue(ranks), batch = options.BatchSize;
            if (r < 2) throw new CliException($"--ranks must be at least 2 (got {r}).");
            if (batch % r != 0 || batch / r < 2) throw new CliException($"--batch-size {batch} (the global batch) must split into {r} shards of at least 2.");
            int perRank = batch / r;
            var dataset = options.Dataset;

            // The model: each segment at one thread and the per-rank batch, and its gradient bytes.
            using (var local = new Trainer(options with { BatchSize = perRank }).CreateLocalTrainer(dataset.Classes, options.ImageSize ?? dataset.ImageSize))
            {
                var segments = PipelineProbe.MeasureSegments(local, perRank, parse.GetValue(steps), 1);
                var ms = segments.Select(s => s.Milliseconds).ToArray();
                var bytes = Enumerable.Range(0, local.Split.K).Select(j => local.TrainableParameters(j, j).Sum(p => p.numel()) * 4L).ToArray();
                var prediction = new Table().Title(string.Create(CultureInfo.InvariantCulture,
                        $"{options.Architecture} K={local.Split.K} {Choices.Name(options.Rule)}{(options.Man is null ? "" : "+man")}: " +
                        $"predicted, per-rank batch {perRank}, " +
                        $"compute {ms.Sum():0} ms/step at 1 thread, {bytes.Sum() / 1048576.0:0.00} MiB of gradients in {bytes.Length} all-reduces"))
                    .AddColumns("hosts", "link Gbit/s", "communication ms", "exposed ms", "hidden", "step ms", "speed-up over 1 host");
                foreach (int h in hosts.Ints(parse))
                foreach (double g in links.Doubles(parse))
                {
                    var p = DataParallelCostModel.Predict(ms, bytes, h, g);
                    prediction.AddRow(I(h), F(g, "0"), F(p.CommunicationMilliseconds, "0.0"), F(p.ExposedMilliseconds, "0.0"), F(p.HiddenFraction, "P0"),
                        F(p.StepMilliseconds, "0"), F(p.SpeedUp(h), "0.00") + "×");
                }
                AnsiConsole.Write(prediction);
            }
            if (parse.GetValue(predictOnly)) return 0;

            // The measurement: three kinds of job, alternating, each a process of its own.
            var passOn = TrainCommand.Groups(parse.Tokens.Where(t => t.Type != System.CommandLine.Parsing.TokenType.Command).Select(t => t.Value))
                .Where(g => !own.Contains(g[0])).SelectMany(g => g).ToList();
            int limit = parse.GetValue(trainLimit);
            var manml = Path.Combine(AppContext.BaseDirectory, "manml.dll");
            var mpirun = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists)
                ?? throw new CliException("mpirun is not installed (scripts/install-mpi.sh installs Open MPI).");
            var kinds = new (string Name, Func<string, (string, List<string>)> Command)[]
            {
                ("one process, 1 thread", dir => ("dotnet", Train(manml, passOn, dir, limit, batch, 1, false))),
                ("one process, 2 threads", dir => ("dotnet", Train(manml, passOn, dir, limit, batch, 2, false))),
                ($"{r} ranks × 1 thread (mpirun)", dir => (mpirun, new List<string> { "-np", I(r), "dotnet" }.Concat(Train(manml, passOn, dir, limit,
                    perRank, 1, true)).ToList())),
            };
            var results = kinds.Select(_ => new List<(double ImagesPerSecond, JsonNode? Communication)>()).ToArray();
            for (int round = 0; round < parse.GetValue(rounds); round++)
                for (int i = 0; i < kinds.Length; i++)
                {
                    var dir = Path.Combine(Path.GetTempPath(), "manml-dp-" + Guid.NewGuid().ToString("N")[..8]);
                    try
                    {
                        var (program, args) = kinds[i].Command(dir);
                        var run = RunChild(program, args);
                        if (run.ExitCode != 0) throw new CliException($"{kinds[i].Name} failed (exit code {run.ExitCode}): {run.Output.Trim()}");
                        var epoch = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "metrics.json")))!["epochs"]![1]!;
                        double seconds = epoch["seconds"]!.GetValue<double>();
                        results[i].Add((limit / seconds, epoch["communication"]));
                        AnsiConsole.WriteLine(FormattableString.Invariant($"round {round + 1}: {kinds[i].Name}: {limit / seconds:0.0} images/s"));
                    }
                    finally
                    {
                        if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true);
                    }
                }
            double baseline = results[0].Average(x => x.ImagesPerSecond);
            var measured = new Table().Title(FormattableString.Invariant(
                    $"measured: global batch {batch}, {limit} images per epoch, second epoch timed, {parse.GetValue(rounds)} alternating rounds"))
                .AddColumns("job", "images/s (rounds)", "mean", "vs one process at 1 thread", "gradient exchange");
            for (int i = 0; i < kinds.Length; i++)
            {
                var ips = results[i].Select(x => x.ImagesPerSecond).ToArray();
                string exchange = "";
                if (results[i].Select(x => x.Communication).LastOrDefault(c => c is not null) is { } c)
                {
                    double count = c["steps"]!.GetValue<double>(), comm = c["communication_seconds"]!.GetValue<double>();
                    double exposed = c["exposed_seconds"]!.GetValue<double>();
                    exchange = string.Create(CultureInfo.InvariantCulture,
                        $"{c["bytes_per_step"]!.GetValue<long>() / 1048576.0:0.00} MiB/step; " +
                        $"{1000 * comm / count:0.0} ms/step of all-reduces in flight, {1000 * exposed / count:0.0} ms/step exposed " +
                        $"({(comm <= 0 ? 1 : Math.Clamp(1 - exposed / comm, 0, 1)):P0} hidden)");
                }
                measured.AddRow(kinds[i].Name, string.Join(", ", ips.Select(v => F(v, "0.0"))), F(ips.Average(), "0.0"), F(ips.Average() / baseline,
                    "0.00") + "×", exchange);
            }
            AnsiConsole.Write(measured);
            return 0;
        }));
        return command;
    }

    // Ranks on this machine: shared memory between them, loopback for Open MPI's wiring, no core binding.
    private static readonly Dictionary<string, string> MpiEnvironment = new()
    {
        ["OMPI_ALLOW_RUN_AS_ROOT"] = "1", ["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1", ["OMPI_MCA_btl"] = "self,vader",
        ["OMPI_MCA_oob_tcp_if_include"] = "lo", ["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none",
        ["OMPI_MCA_rmaps_base_oversubscribe"] = "1", ["OMPI_MCA_hwloc_base_binding_policy"] = "none",
    };

    private static (int ExitCode, string Output) RunChild(string program, IEnumerable<string> args)
    {
        var info = new System.Diagnostics.ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) info.ArgumentList.Add(a);
        foreach (var (k, v) in MpiEnvironment) info.Environment[k] = v;
        using var process = System.Diagnostics.Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(30)))
        {
            process.Kill(entireProcessTree: true);
            throw new CliException($"{program} did not finish in 30 minutes.");
        }
        return (process.ExitCode, stderr.Result + stdout.Result);
    }

    private static List<string> Train(string manml, IEnumerable<string> passOn, string dir, int limit, int batch, int threads, bool distributed)
    {
        var args = new List<string> { manml, "train" };
        args.AddRange(passOn);
        args.AddRange(new[] { "--train-limit", I(limit), "--val-split", "64", "--epochs", "2", "--batch-size", I(batch), "--threads", I(threads),
            "--no-backend-check", "--out", dir });
        if (distributed) args.AddRange(new[] { "--distributed", "mpi" });
        return args;
    }

    private static int[] Ints(this Option<string> option, ParseResult parse) =>
        parse.GetValue(option)!.Split(',').Select(v => int.Parse(v.Trim(), CultureInfo.InvariantCulture)).ToArray();

    private static double[] Doubles(this Option<string> option, ParseResult parse) =>
        parse.GetValue(option)!.Split(',').Select(v => double.Parse(v.Trim(), CultureInfo.InvariantCulture)).ToArray();

    private static string I(int value) => value.ToString(CultureInfo.InvariantCulture);

    private static string F(double value, string format) => value.ToString(format, CultureInfo.InvariantCulture);
}
