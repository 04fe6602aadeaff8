// manml doctor: what this machine's backend is (CPU, the instruction set oneDNN runs, libtorch and TorchSharp, threads,
// the convolution workaround in force) and whether it computes every convolution of a configuration correctly: each
// shape in float32 along the route training takes, against libtorch's float64 path. --isolate runs each shape in a child
// process, so that a shape that crashes libtorch (SIGFPE in some oneDNN kernels) is reported instead of ending the check;
// with --conv-workaround never that shows libtorch's own behaviour. Exit code 0 when every shape is right, 4 otherwise.
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Man.ML.Backend;
using Man.ML.Data;
using Man.ML.Models;
using Man.ML.Training;

namespace Man.ML.Samples.Cli;

internal static class DoctorCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var isolate = new Option<bool>("--isolate")
        {
            Description = "Check each convolution shape in its own child process (a crash in libtorch is then reported, not fatal).",
        };
        var checkShape = new Option<string?>("--check-shape")
        {
            Description = "Internal: check one shape (its fields, comma-separated) and print the result as JSON.", Hidden = true,
        };
        var oneDnnInfo = new Option<bool>("--onednn-info")
        {
            Description = "Internal: run one convolution (with ONEDNN_VERBOSE=1, oneDNN prints its version and ISA).", Hidden = true,
        };
        var command = new Command("doctor",
            "Show this machine's backend and check that it computes every convolution of a configuration correctly, " +
            "in the run's precision (--precision), against float64.");
        foreach (var o in model.All) command.Options.Add(o);
        command.Options.Add(isolate);
        command.Options.Add(checkShape);
        var checkChannelsLast = new Option<bool>("--check-channels-last")
        {
            Description = "Internal: with --check-shape, lay the input out channels-last.", Hidden = true,
        };
        command.Options.Add(checkChannelsLast);
        command.Options.Add(oneDnnInfo);
        command.SetAction(parse => CliErrors.Run(() =>
        {
            model.ApplyProcessSettings(parse);
            var options = model.ToTrainingOptions(parse);
            options.Validate();
            var device = Devices.Resolve(options.Device);
            if (parse.GetValue(oneDnnInfo))
            {
                using var x = TorchSharp.torch.ones(2, 16, 8, 8, requires_grad: true);
                using var w = TorchSharp.torch.ones(16, 16, 3, 3);
                TorchSharp.torch.nn.functional.conv2d(x, w, padding: new long[] { 1, 1 }).sum().backward();
                return 0;
            }
            if (parse.GetValue(checkShape) is { } spec)
            {
                var check = BackendCheck.Check(ParseShape(spec), Array.Empty<string>(), device, parse.GetValue(checkChannelsLast),
                    options.ConvolutionWorkaround ?? ConvolutionRouting.DefaultWorkaround, BFloat16Support.Resolve(options.Precision, device.type));
                Console.WriteLine(JsonSerializer.Serialize(new
                {
                    route = check.Route.ToString(), output_error = Finite(check.OutputError), input_gradient_error = Finite(check.InputGradientError),
                    weight_gradient_error = Finite(check.WeightGradientError),
                }));
                return 0;
            }
            return Diagnose(options, device, parse.GetValue(isolate), ChildArguments(parse, options));
        }));
        return command;
    }

    private static int Diagnose(TrainingOptions options, TorchSharp.torch.Device device, bool isolate, IReadOnlyList<string> childArguments)
    {
        var clock = Stopwatch.StartNew();
        var environment = BackendCheck.DescribeEnvironment(options.ConvolutionWorkaround ?? ConvolutionRouting.DefaultWorkaround);
        var (version, isa) = OneDnnReport();
        Console.WriteLine($"CPU                     {environment.Cpu} ({Environment.ProcessorCount} logical cores)");
        Console.WriteLine($"oneDNN                  {version ?? "(version not reported)"}");
        Console.WriteLine($"oneDNN ISA              {isa ?? "(not reported)"}; from the CPU's features: {environment.OneDnnIsa}");
        Console.WriteLine($"libtorch / TorchSharp   {environment.LibTorch} / {environment.TorchSharp}");
        Console.WriteLine($"threads                 {environment.Threads}");
        Console.WriteLine($"convolution workaround  {Workaround(environment)}");
        Console.WriteLine("bf16                    " + (BFloat16Support.Native(device.type)
            ? $"native on {device.type}"
            : "not native on this CPU (no avx512_bf16 or amx_bf16): bf16 is refused, bf16-emulated runs at float32's speed"));

        var dataset = options.Dataset;
        int side = options.ImageSize ?? dataset.ImageSize;
        var trainer = new Trainer(options);
        using var local = trainer.CreateLocalTrainer(dataset.Classes, side);
        var shapes = BackendCheck.Shapes(local);
        var precision = local.Precision;
        double tolerance = BackendCheck.ToleranceFor(precision);
        Console.WriteLine($"precision               {Choices.Name(precision)}{(options.Precision == TrainingPrecision.Auto ? " (auto)" : "")}: " +
                          "every shape is checked as this run computes it");
        bool channelsLast = local.Network.ChannelsLastOn(device.type);
        Console.WriteLine($"activation layout       {(channelsLast ? "channels-last (NHWC strides)" : "channels-first (NCHW)")}, " +
                          $"{ActivationLayouts.EnvironmentVariable}={Choices.Name(local.Network.Layout)}");
        string split = trainer.Plan!.SplitTable is { } t ? $"reference split '{t}'" : "balanced split";
        Console.WriteLine(FormattableString.Invariant(
            $"configuration           {options.Architecture} K={options.K}, rule {Choices.Name(options.Rule)}{(options.Man is null ? "" : " + MAN")} ") +
            FormattableString.Invariant(
                $"({split}), {side}x{side}, on {device}: {shapes.Count} convolution shapes{(isolate ? ", each checked in a child process" : "")}"));
        Console.WriteLine();
        var rows = new List<string[]>
        {
            new[]
            {
                "convolution (in→out kernel/stride padding, input size)", "gradients", "route", "output", "input grad", "weight grad", "result", "layers",
            },
        };
        int wrong = 0;
        foreach (var (shape, layers) in shapes)
        {
            string route, output, input, weights, verdict;
            if (isolate)
            {
                var (ok, json, failure) = RunChild(childArguments.Concat(new[] { "--check-shape", FormatShape(shape) })
                    .Concat(channelsLast ? new[] { "--check-channels-last" } : Array.Empty<string>()));
                if (!ok) { (route, output, input, weights, verdict) = ("-", "-", "-", "-", failure); wrong++; }
                else
                {
                    route = json!["route"]!.GetValue<string>();
                    double[] errors = { Value(json["output_error"]), Value(json["input_gradient_error"]), Value(json["weight_gradient_error"]) };
                    (output, input, weights) = (Error(errors[0]), shape.InputGradient ? Error(errors[1]) : "-", Error(errors[2]));
                    bool correct = errors.All(e => e <= tolerance);
                    verdict = correct ? "ok" : "WRONG";
                    if (!correct) wrong++;
                }
            }
            else
            {
                var check = BackendCheck.Check(shape, layers, device, channelsLast, local.Network.Workaround, precision);
                (route, output, input, weights) = (check.Route.ToString(), Error(check.OutputError),
                    shape.InputGradient ? Error(check.InputGradientError) : "-", Error(check.WeightGradientError));
                verdict = check.Correct ? "ok" : "WRONG";
                if (!check.Correct) wrong++;
            }
            rows.Add(new[]
            {
                FormattableString.Invariant($"{shape.InChannels}→{shape.OutChannels} {shape.Kernel}x{shape.Kernel}/{shape.Stride} p{shape.Padding}") +
                FormattableString.Invariant($"{(shape.Groups > 1 ? $" g{shape.Groups}" : "")} at {shape.Height}x{shape.Width}"),
                shape.InputGradient ? "input, weight" : "weight", route, output, input, weights, verdict,
                layers[0] + (layers.Count > 1 ? $" +{layers.Count - 1} more" : ""),
            });
        }
        var widths = Enumerable.Range(0, rows[0].Length).Select(c => rows.Max(r => r[c].Length)).ToArray();
        foreach (var row in rows)
            Console.WriteLine(string.Join("  ", row.Select((cell, c) => c == row.Length - 1 ? cell : cell.PadRight(widths[c]))).TrimEnd());
        Console.WriteLine();
        Console.WriteLine(
            $"errors: largest |{(precision == TrainingPrecision.Float32 ? "float32" : Choices.Name(precision))} − float64| " +
            "over the largest |float64| of the same tensor, batch of 2; " +
            (precision == TrainingPrecision.Float32 ? "" : "float64 takes the same bf16-rounded operands; ") +
            FormattableString.Invariant($"tolerance {tolerance:g}."));
        Console.WriteLine(wrong == 0
            ? FormattableString.Invariant($"all {shapes.Count} shapes correct ({clock.Elapsed.TotalSeconds:0.0} s)")
            : FormattableString.Invariant($"{wrong} of {shapes.Count} shapes WRONG or crashed ({clock.Elapsed.TotalSeconds:0.0} s); see docs/BACKEND.md"));
        return wrong == 0 ? 0 : 4;
    }

    private static string Workaround(BackendEnvironment e) => e.Workaround switch
    {
        ConvolutionWorkaround.Never =>
            $"never (plain libtorch; the small-output-channel fault is {(e.SmallOutputChannelFault ? "present" : "absent")} on this CPU)",
        ConvolutionWorkaround.Always => "always (both rewrites on every device)",
        _ => "auto: strided 1x1 convolutions rewritten on the CPU; small output channel counts " +
             (e.SmallOutputChannelFault ? "padded (this CPU computes them wrongly)" : "left alone (this CPU computes them correctly)"),
    };

    // oneDNN's own word on its version and ISA: a child process runs one convolution with ONEDNN_VERBOSE=1.
    private static (string? Version, string? Isa) OneDnnReport()
    {
        var info = SelfProcess.StartInfo(new[] { "doctor", "--onednn-info", "--threads", "1" });
        info.Environment["ONEDNN_VERBOSE"] = "1";
        try
        {
            using var process = Process.Start(info)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            _ = process.StandardError.ReadToEndAsync();
            if (!process.WaitForExit(60_000)) { process.Kill(true); return (null, null); }
            var lines = stdout.Result.Split('\n');
            string? Find(string marker) => lines.Select(l => l.Trim()).FirstOrDefault(l => l.Contains(marker, StringComparison.Ordinal)) is { } line
                ? line[(line.IndexOf(marker, StringComparison.Ordinal) + marker.Length)..].Trim() : null;
            return (Find("info,oneDNN "), Find("info,cpu,isa:"));
        }
        catch (System.ComponentModel.Win32Exception) { return (null, null); }
    }

    private static (bool Ok, JsonObject? Json, string Failure) RunChild(IEnumerable<string> args)
    {
        var info = SelfProcess.StartInfo(args);
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(300_000)) { process.Kill(true); return (false, null, "timed out"); }
        if (process.ExitCode != 0)
        {
            int code = process.ExitCode;
            string name = (code - 128) switch { 8 => ", SIGFPE", 11 => ", SIGSEGV", 6 => ", SIGABRT", _ => "" };
            var signal = code > 128 && code < 160 ? $" (killed by signal {code - 128}{name})" : "";
            var message = stderr.Result.Split('\n').Select(l => l.Trim()).LastOrDefault(l => l.Length > 0 && !l.Contains("NNPACK", StringComparison.Ordinal));
            return (false, null, $"crashed: exit code {code}{signal}{(message is null || signal.Length > 0 ? "" : ": " + message)}");
        }
        var line = stdout.Result.Trim().Split('\n')[^1];
        return (true, JsonNode.Parse(line)!.AsObject(), "");
    }

    // The child gets this process's threads, device and policy: the shapes are checked as this command would check them.
    private static IReadOnlyList<string> ChildArguments(ParseResult parse, TrainingOptions options) => new[]
    {
        "doctor", "--threads", TorchSharp.torch.get_num_threads().ToString(CultureInfo.InvariantCulture),
        "--device", parse.GetValue<string>("--device")!,
        "--conv-workaround", Choices.Name(options.ConvolutionWorkaround ?? ConvolutionRouting.DefaultWorkaround),
        "--precision", Choices.Name(options.Precision),
    };

    private static string FormatShape(ConvolutionShape s) => string.Join(',', new object[]
        { s.InChannels, s.OutChannels, s.Kernel, s.Stride, s.Padding, s.Groups, s.HasBias, s.Height, s.Width, s.InputGradient }
        .Select(v => Convert.ToString(v, CultureInfo.InvariantCulture)));

    private static ConvolutionShape ParseShape(string spec)
    {
        var p = spec.Split(',');
        if (p.Length != 10) throw new CliException($"--check-shape '{spec}' needs 10 fields.");
        int I(int i) => int.Parse(p[i], CultureInfo.InvariantCulture);
        return new ConvolutionShape(I(0), I(1), I(2), I(3), I(4), I(5), bool.Parse(p[6]), I(7), I(8), bool.Parse(p[9]));
    }

    private static double? Finite(double value) => double.IsFinite(value) ? value : null; // JSON has no NaN: null means not finite

    private static double Value(JsonNode? node) => node is null ? double.NaN : node.GetValue<double>();

    private static string Error(double e) => double.IsNaN(e) ? "NaN" : e.ToString("0.0e+0", CultureInfo.InvariantCulture);
}
