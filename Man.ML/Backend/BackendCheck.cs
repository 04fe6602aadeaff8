// The backend self-check: every convolution shape a training configuration will run (network, auxiliary heads, MAN's
// copies), computed in the run's precision on the training device exactly as training computes it (ConvolutionRouting
// and the bf16 casts included) and compared with libtorch's float64 CPU path, an independent implementation (oneDNN
// has no float64 kernels). oneDNN's bf16 kernels are other code than its float32 ones, so a bf16 run checks them: the
// float64 reference then takes the same bf16-rounded operands, and what remains is the kernel's own error. Training
// runs it once per process for the shapes it is about to train; `manml doctor` prints it. It sits between the training
// loop and the local-learning engine: Training -> Backend -> Local -> Models.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using Man.ML.Local;
using Man.ML.Models;

namespace Man.ML.Backend;

/// <summary>A convolution as the backend sees it: its layer's settings and the spatial size of its input.</summary>
/// <param name="InChannels">Input channels.</param>
/// <param name="OutChannels">Output channels.</param>
/// <param name="Kernel">Side of the square kernel.</param>
/// <param name="Stride">Stride.</param>
/// <param name="Padding">Zero padding.</param>
/// <param name="Groups">Groups.</param>
/// <param name="HasBias">Whether the layer has a bias.</param>
/// <param name="Height">Input height.</param>
/// <param name="Width">Input width.</param>
/// <param name="InputGradient">Whether training takes the gradient with respect to its input (false for the first layer of a segment).</param>
internal sealed record ConvolutionShape(int InChannels, int OutChannels, int Kernel, int Stride, int Padding, int Groups, bool HasBias,
    int Height, int Width, bool InputGradient)
{
    /// <inheritdoc />
    public override string ToString() => FormattableString.Invariant(
        $"conv {InChannels}→{OutChannels} {Kernel}x{Kernel} stride {Stride} padding {Padding}{(Groups > 1 ? $" groups {Groups}" : "")} ") +
        FormattableString.Invariant($"at {Height}x{Width}{(InputGradient ? "" : " (weight gradient only)")}");
}

/// <summary>The result for one convolution shape.</summary>
/// <param name="Shape">The shape.</param>
/// <param name="Layers">Names of the layers that run it (module paths such as <c>network.units.3.conv1</c>).</param>
/// <param name="Route">How Man.ML computes it under the policy checked.</param>
/// <param name="OutputError">Largest error of the forward output, relative to the output's largest magnitude.</param>
/// <param name="InputGradientError">The same for the input gradient (0 when none is taken); NaN when not finite.</param>
/// <param name="WeightGradientError">The same for the weight and bias gradients; NaN when not finite.</param>
/// <param name="Precision">The precision it was computed in (float32, bf16 or emulated bf16).</param>
/// <param name="Device">The device it was computed on.</param>
internal sealed record ConvolutionCheck(ConvolutionShape Shape, IReadOnlyList<string> Layers, ConvolutionRoute Route,
    double OutputError, double InputGradientError, double WeightGradientError, TrainingPrecision Precision = TrainingPrecision.Float32,
    string Device = "cpu")
{
    /// <summary>The largest error accepted in <see cref="Precision"/> (<see cref="BackendCheck.ToleranceFor"/>).</summary>
    public double Tolerance => BackendCheck.ToleranceFor(Precision);

    /// <summary>Whether every value is finite and within <see cref="Tolerance"/>.</summary>
    public bool Correct => new[] { OutputError, InputGradientError, WeightGradientError }.All(e => e <= Tolerance);
}

/// <summary>What the backend is: CPU, instruction sets, libtorch, threads and the convolution policy checked.</summary>
/// <param name="Cpu">CPU vendor, family, model and name (from /proc/cpuinfo on Linux).</param>
/// <param name="OneDnnIsa">The instruction set oneDNN uses for float32 convolutions on this CPU (from the CPU's features
/// and <c>ONEDNN_MAX_CPU_ISA</c>).</param>
/// <param name="LibTorch">libtorch's version.</param>
/// <param name="TorchSharp">TorchSharp's version.</param>
/// <param name="Threads">libtorch's CPU threads.</param>
/// <param name="Workaround">The convolution policy checked (the network's, for a trainer's check).</param>
/// <param name="SmallOutputChannelFault">Whether this CPU computes wrong input gradients for output channel counts that
/// are not a multiple of 16 (the once-per-process probe).</param>
internal sealed record BackendEnvironment(string Cpu, string OneDnnIsa, string LibTorch, string TorchSharp, int Threads,
    ConvolutionWorkaround Workaround, bool SmallOutputChannelFault);

/// <summary>The backend check of one configuration.</summary>
/// <param name="Environment">The backend.</param>
/// <param name="Device">Where the checked float32 computations ran.</param>
/// <param name="Convolutions">One result per distinct convolution shape.</param>
/// <param name="Seconds">How long the check took.</param>
/// <param name="Precision">The precision the convolutions were computed in (the run's).</param>
internal sealed record BackendReport(BackendEnvironment Environment, string Device, IReadOnlyList<ConvolutionCheck> Convolutions, double Seconds,
    TrainingPrecision Precision = TrainingPrecision.Float32)
{
    /// <summary>Whether every shape is computed correctly.</summary>
    public bool Correct => Convolutions.All(c => c.Correct);

    /// <summary>Throws <see cref="BackendFaultException"/> naming the first wrong shape, its layers and the remedy.</summary>
    public void EnsureCorrect()
    {
        var wrong = Convolutions.Where(c => !c.Correct).ToList();
        if (wrong.Count == 0) return;
        var first = wrong[0];
        string Error(double e) => double.IsNaN(e) ? "not finite" : e.ToString("g3", CultureInfo.InvariantCulture) + " of its size";
        var what = !(first.InputGradientError <= first.Tolerance) ? $"input gradient off by {Error(first.InputGradientError)}"
            : !(first.WeightGradientError <= first.Tolerance) ? $"weight gradient off by {Error(first.WeightGradientError)}"
            : $"output off by {Error(first.OutputError)}";
        bool bf16 = first.Precision != TrainingPrecision.Float32;
        bool onGpu = first.Device.StartsWith("cuda", StringComparison.Ordinal);
        var inPrecision = bf16 ? $"in {Choices.Name(first.Precision)}" : "";
        var where = onGpu ? $"on {first.Device}{(bf16 ? " " + inPrecision : "")}"
            : $"on this machine ({Environment.Cpu}; oneDNN {Environment.OneDnnIsa}; {Environment.Threads} threads{(bf16 ? "; " + inPrecision : "")})";
        var remedy = bf16 ? $"train in float32 (precision fp32; this check ran in {Choices.Name(first.Precision)}, whose kernels are other code)"
            : onGpu ? $"no workaround of Man.ML covers this shape on {first.Device}: train on another device or in bf16"
            : Environment.Workaround == ConvolutionWorkaround.Never
            ? "turn Man.ML's convolution workaround back on (auto or always; it is 'never' now)"
            : "no workaround of Man.ML covers this shape: set ONEDNN_MAX_CPU_ISA=AVX in the environment before starting the process " +
              "(oneDNN's AVX kernels computed every shape correctly where this was measured, at some cost in speed), or train on another device";
        throw new BackendFaultException(this, string.Create(CultureInfo.InvariantCulture,
            $"libtorch {Environment.LibTorch} computes a wrong convolution gradient {where}: " +
            $"{first.Shape}, in {first.Layers[0]}{(first.Layers.Count > 1 ? $" and {first.Layers.Count - 1} more layers" : "")}, " +
            $"{what} (route {first.Route}). " +
            $"{(wrong.Count > 1 ? $"{wrong.Count - 1} more shapes are wrong. " : "")}Remedy: {remedy}. " +
            $"`manml doctor` lists every shape; the check can be turned off (--no-backend-check) at your own risk."));
    }
}

/// <summary>The backend computes a wrong convolution result or gradient for a shape training needs.</summary>
public sealed class BackendFaultException : Exception
{
    internal BackendFaultException(BackendReport report, string message) : base(message) => Report = report;

    /// <summary>The check that failed.</summary>
    internal BackendReport Report { get; }
}

/// <summary>Checks the backend's convolutions for a training configuration against float64.</summary>
internal static class BackendCheck
{
    /// <summary>Largest accepted error in float32, relative to the largest magnitude of the same tensor. Correct float32
    /// kernels stay below 1e-5 on these shapes; the faults seen are errors of the gradient's own size, or NaN.</summary>
    public const double Tolerance = 1e-3;

    /// <summary>
    /// Largest accepted error in bf16, relative as <see cref="Tolerance"/>: the reference takes the same bf16-rounded
    /// operands, so what is left is the rounding of each result to bf16's 8 significant bits (at most 2⁻⁸ ≈ 0.0039 of
    /// the largest value) and the kernel's summation: oneDNN's bf16 kernels accumulate in float32, while libtorch's
    /// fallback kernels on a CPU without bf16 instructions round partial sums (the input gradient's k² taps) to bf16 as
    /// well, up to 3.6·2⁻⁸ where that was measured (docs/PRECISION.md). 8·2⁻⁸ covers both and stays far below the faults
    /// (errors of the result's own size, or NaN).
    /// </summary>
    public const double BFloat16Tolerance = 8.0 / 256;

    /// <summary>The tolerance of a check computed in <paramref name="precision"/>.</summary>
    public static double ToleranceFor(TrainingPrecision precision) =>
        precision == TrainingPrecision.Float32 ? Tolerance : BFloat16Tolerance;

    private const int Batch = 2; // the smallest batch that shows the faults measured (a batch of one does not)
    private static readonly ConcurrentDictionary<(ConvolutionShape, string, int, ConvolutionWorkaround, bool ChannelsLast, TrainingPrecision),
        ConvolutionCheck> Checked = new();

    /// <summary>
    /// Checks every convolution shape <paramref name="trainer"/> trains (its network, auxiliary heads and MAN's copies):
    /// a batch of two is computed in float32 on the trainer's device along the route training takes (under the network's
    /// <see cref="UnitChainNetwork.Workaround"/> and <see cref="UnitChainNetwork.Layout"/>), and compared with
    /// libtorch's float64 CPU computation. Leaves the trainer's parameters, statistics and random generator as they were.
    /// </summary>
    public static BackendReport Run(LocalTrainer trainer)
    {
        var clock = Stopwatch.StartNew();
        var policy = trainer.Network.Workaround;
        var byDevice = ShapesByDevice(trainer);
        var checks = byDevice.SelectMany(d => d.Shapes.Select(u =>
            Check(u.Key, u.Value, d.Device, policy, Candidate(policy), trainer.Network.ChannelsLastOn(d.Device.type), trainer.Precision))).ToList();
        return new BackendReport(DescribeEnvironment(policy), DeviceNames(byDevice), checks, clock.Elapsed.TotalSeconds, trainer.Precision);
    }

    private static string DeviceNames(IEnumerable<(Device Device, IReadOnlyDictionary<ConvolutionShape, IReadOnlyList<string>> Shapes)> byDevice) =>
        string.Join(", ", byDevice.Select(d => d.Device.ToString()));

    /// <summary>Checks one convolution shape on <paramref name="device"/> (see <see cref="Run"/>) under
    /// <see cref="ConvolutionRouting.DefaultWorkaround"/>.</summary>
    /// <param name="shape">The shape.</param>
    /// <param name="layers">Names of the layers that run it (reported only).</param>
    /// <param name="device">Where the float32 computation runs.</param>
    public static ConvolutionCheck Check(ConvolutionShape shape, IReadOnlyList<string> layers, Device device) =>
        Check(shape, layers, device, channelsLast: false, ConvolutionRouting.DefaultWorkaround);

    /// <summary>Checks one convolution shape on <paramref name="device"/> with its float32 input laid out channels-last or
    /// not, under <see cref="ConvolutionRouting.DefaultWorkaround"/>.</summary>
    /// <param name="shape">The shape.</param>
    /// <param name="layers">Names of the layers that run it (reported only).</param>
    /// <param name="device">Where the float32 computation runs.</param>
    /// <param name="channelsLast">Whether the float32 input is laid out channels-last (see <see cref="ActivationLayouts"/>).</param>
    public static ConvolutionCheck Check(ConvolutionShape shape, IReadOnlyList<string> layers, Device device, bool channelsLast) =>
        Check(shape, layers, device, channelsLast, ConvolutionRouting.DefaultWorkaround);

    /// <summary>Checks one convolution shape on <paramref name="device"/> as a network with <paramref name="workaround"/>
    /// computes it, its float32 input laid out channels-last or not.</summary>
    /// <param name="shape">The shape.</param>
    /// <param name="layers">Names of the layers that run it (reported only).</param>
    /// <param name="device">Where the float32 computation runs.</param>
    /// <param name="channelsLast">Whether the float32 input is laid out channels-last (see <see cref="ActivationLayouts"/>).</param>
    /// <param name="workaround">The convolution policy the float32 computation follows.</param>
    public static ConvolutionCheck Check(ConvolutionShape shape, IReadOnlyList<string> layers, Device device, bool channelsLast,
        ConvolutionWorkaround workaround) =>
        Check(shape, layers, device, workaround, channelsLast);

    /// <summary>Checks one convolution shape as a network with <paramref name="workaround"/> computes it in
    /// <paramref name="precision"/> (a resolved precision; see the other overloads).</summary>
    /// <param name="shape">The shape.</param>
    /// <param name="layers">Names of the layers that run it (reported only).</param>
    /// <param name="device">Where the computation runs.</param>
    /// <param name="channelsLast">Whether the input is laid out channels-last.</param>
    /// <param name="workaround">The convolution policy.</param>
    /// <param name="precision">float32, bf16 or emulated bf16.</param>
    public static ConvolutionCheck Check(ConvolutionShape shape, IReadOnlyList<string> layers, Device device, bool channelsLast,
        ConvolutionWorkaround workaround, TrainingPrecision precision) =>
        Check(shape, layers, device, workaround, Candidate(workaround), channelsLast, precision);

    /// <summary>
    /// What training runs once per process: <see cref="Run"/> for the shapes not checked before in this process (same
    /// device, threads, policy and layout), then <see cref="BackendReport.EnsureCorrect"/>.
    /// </summary>
    internal static BackendReport EnsureCorrect(LocalTrainer trainer)
    {
        var clock = Stopwatch.StartNew();
        int threads = get_num_threads();
        var policy = trainer.Network.Workaround;
        var precision = trainer.Precision;
        var byDevice = ShapesByDevice(trainer);
        var checks = byDevice.SelectMany(d =>
        {
            bool channelsLast = trainer.Network.ChannelsLastOn(d.Device.type);
            return d.Shapes.Select(u => Checked.GetOrAdd((u.Key, d.Device.ToString(), threads, policy, channelsLast, precision),
                _ => Check(u.Key, u.Value, d.Device, policy, Candidate(policy), channelsLast, precision)));
        }).ToList();
        var report = new BackendReport(DescribeEnvironment(policy), DeviceNames(byDevice), checks, clock.Elapsed.TotalSeconds, precision);
        report.EnsureCorrect();
        return report;
    }

    /// <summary>The backend as this process sees it: CPU, oneDNN's instruction set, versions, threads, and
    /// <see cref="ConvolutionRouting.DefaultWorkaround"/> as the convolution policy.</summary>
    public static BackendEnvironment DescribeEnvironment() => DescribeEnvironment(ConvolutionRouting.DefaultWorkaround);

    /// <summary>The backend as this process sees it, with <paramref name="workaround"/> as the convolution policy (a
    /// network's <see cref="UnitChainNetwork.Workaround"/>, a run's choice).</summary>
    public static BackendEnvironment DescribeEnvironment(ConvolutionWorkaround workaround) => new(CpuName(), OneDnnIsa(), LibTorchVersion(),
        TorchSharpVersion(), get_num_threads(), workaround, ConvolutionRouting.SmallOutputChannelFault);

    /// <summary>The convolution as training computes it (the candidate checked).</summary>
    internal delegate Tensor Convolution(Tensor input, Tensor weight, Tensor? bias, ConvolutionShape shape);

    /// <summary>The convolution as a layer under <paramref name="policy"/> computes it, in the precision scope open on
    /// the thread (the casts at the layer's boundary included, as <see cref="Conv2dLayer"/> makes them).</summary>
    internal static Convolution Candidate(ConvolutionWorkaround policy) => (input, weight, bias, shape) =>
    {
        var (x, w, b) = (MixedPrecision.Operand(input)!, MixedPrecision.Operand(weight)!, MixedPrecision.Operand(bias));
        return MixedPrecision.Result(ConvolutionRouting.Convolve(x, w, b, shape.Stride, shape.Padding, shape.Groups,
            ConvolutionRouting.RouteFor(policy, x, w, shape.Stride, shape.Padding, shape.Groups)));
    };

    /// <summary>One shape, computed as a layer under <paramref name="policy"/> computes it
    /// (see <see cref="Check(ConvolutionShape, IReadOnlyList{string}, Device, ConvolutionWorkaround, Convolution, bool, TrainingPrecision)"/>).</summary>
    internal static ConvolutionCheck Check(ConvolutionShape shape, IReadOnlyList<string> layers,
        Device device, ConvolutionWorkaround policy, bool channelsLast) =>
        Check(shape, layers, device, policy, Candidate(policy), channelsLast);

    /// <summary>
    /// Every distinct convolution shape <paramref name="trainer"/> runs in a training step, with the names of the layers
    /// that run it, found by one forward pass of a batch of two through every segment, its head and MAN's copies (in
    /// evaluation mode, so no statistic moves).
    /// </summary>
    public static IReadOnlyDictionary<ConvolutionShape, IReadOnlyList<string>> Shapes(LocalTrainer trainer) =>
        Group(Trace(trainer, out var names), names);

    /// <summary>The shapes of <see cref="Shapes"/> by the device each layer runs on (a pipelined run's stages may sit on
    /// several), in the order the segments first reach each device.</summary>
    public static IReadOnlyList<(Device Device, IReadOnlyDictionary<ConvolutionShape, IReadOnlyList<string>> Shapes)> ShapesByDevice(LocalTrainer trainer)
    {
        var calls = Trace(trainer, out var names);
        return calls.GroupBy(c => c.Layer.Weight.device.ToString())
            .Select(g => (g.First().Layer.Weight.device, Group(g.ToList(), names))).ToList();
    }

    private static IReadOnlyDictionary<ConvolutionShape, IReadOnlyList<string>> Group(
        IReadOnlyList<(Conv2dLayer Layer, long[] InputShape, bool RequiresGrad)> calls, Dictionary<Conv2dLayer, string> names)
    {
        var shapes = new Dictionary<ConvolutionShape, List<string>>();
        foreach (var (layer, inputShape, requiresGrad) in calls)
        {
            var shape = new ConvolutionShape(layer.InChannels, layer.OutChannels, layer.KernelSize, layer.Stride, layer.Padding, layer.Groups,
                layer.Bias is not null, (int)inputShape[2], (int)inputShape[3], requiresGrad);
            if (!shapes.TryGetValue(shape, out var list)) shapes[shape] = list = new List<string>();
            var name = names.TryGetValue(layer, out var n) ? n : layer.GetName();
            if (!list.Contains(name)) list.Add(name);
        }
        return shapes.ToDictionary(p => p.Key, p => (IReadOnlyList<string>)p.Value);
    }

    // Every convolution call of one training step on a batch of two, each segment on the device its units sit on.
    private static IReadOnlyList<(Conv2dLayer Layer, long[] InputShape, bool RequiresGrad)> Trace(LocalTrainer trainer,
        out Dictionary<Conv2dLayer, string> names)
    {
        names = new Dictionary<Conv2dLayer, string>(ReferenceEqualityComparer.Instance);
        foreach (var (name, m) in trainer.Network.named_modules()) if (m is Conv2dLayer c) names.TryAdd(c, "network." + name);
        foreach (var (name, m) in trainer.AuxiliaryModule.named_modules()) if (m is Conv2dLayer c) names.TryAdd(c, "auxiliary." + name);

        var network = trainer.Network;
        var device = network.parameters().First().device;
        var training = network.training;
        trainer.SetTraining(false); // batch-norm statistics stay as they are
        List<(Conv2dLayer Layer, long[] InputShape, bool RequiresGrad)> calls;
        try
        {
            using var scope = NewDisposeScope();
            using var grad = enable_grad(); // as in training: a segment's input is detached, everything inside takes gradients
            var input = network.InputShape;
            var images = zeros(new long[] { Batch, input.Channels, input.Height, input.Width }, device: device);
            var targets = new LocalTargets(zeros(new long[] { Batch }, ScalarType.Int64, device), images);
            using var precision = MixedPrecision.Enter(trainer.Precision); // the maps training hands on (bf16 in a bf16 run)
            calls = ConvolutionTrace.Collect(() =>
            {
                var h = images;
                for (int j = 0; j < trainer.Split.K; j++)
                {
                    var range = trainer.Split.Segments[j];
                    var at = network.Units[range.Start].parameters().First().device;
                    if (h.device != at)
                    {
                        h = h.to(at);
                        targets = new LocalTargets(targets.Labels.to(at), targets.Images.to(at));
                    }
                    h = network.ForwardUnits(h.detach(), range.Start, range.End);
                    if (j < trainer.Split.K - 1)
                        trainer.Heads[j].Loss(trainer.Man is { } man ? man[j].call(h) : h, targets);
                    else
                        network.Head.call(h);
                }
            });
        }
        finally
        {
            trainer.SetTraining(training);
        }
        return calls;
    }

    /// <summary>One shape: computed on <paramref name="device"/> through <paramref name="candidate"/> in
    /// <paramref name="precision"/> (float32 tensors, the candidate casting inside the precision's scope as training
    /// does) against float64 on the CPU; the route reported is the one <paramref name="policy"/> gives.</summary>
    internal static ConvolutionCheck Check(ConvolutionShape shape, IReadOnlyList<string> layers, Device device, ConvolutionWorkaround policy,
        Convolution candidate, bool channelsLast = false, TrainingPrecision precision = TrainingPrecision.Float32)
    {
        using var scope = NewDisposeScope();
        using var grad = enable_grad();
        bool bf16 = precision != TrainingPrecision.Float32;
        var x64 = Pattern(new long[] { Batch, shape.InChannels, shape.Height, shape.Width }, 0.7);
        var w64 = Pattern(new long[] { shape.OutChannels, shape.InChannels / shape.Groups, shape.Kernel, shape.Kernel }, 1.3)
            .TimesInPlace(1.0 / Math.Sqrt((double)shape.InChannels / shape.Groups * shape.Kernel * shape.Kernel));
        var b64 = shape.HasBias ? Pattern(new long[] { shape.OutChannels }, 2.1) : null;
        if (bf16)
        {
            // What the bf16 kernel is given: the operands rounded to bf16, exactly representable in float64.
            (x64, w64, b64) = (RoundedToBFloat16(x64), RoundedToBFloat16(w64), b64 is null ? null : RoundedToBFloat16(b64));
        }

        ConvolutionCheck Compare((Tensor Y, Tensor? Gx, Tensor Gw, Tensor? Gb) candidateResult)
        {
            var (y, gx, gw, gb) = candidateResult;
            var (y64, gx64, gw64, gb64) = Gradients(x64, w64, b64, shape, float64, CPU, channelsLast: false, bf16, convolution:
                (x, w, b, s) => nn.functional.conv2d(x, w, b, new long[] { s.Stride, s.Stride }, new long[] { s.Padding, s.Padding }, groups: s.Groups));
            var route = ConvolutionRouting.RouteFor(policy, device.type, shape.InputGradient, w64.shape, shape.Stride,
                shape.Padding, shape.Groups, channelsLast, bf16);
            double weightError = Math.Max(RelativeError(gw, gw64), gb is null ? 0 : RelativeError(gb, gb64!));
            return new ConvolutionCheck(shape, layers, route, RelativeError(y, y64), gx is null ? 0 : RelativeError(gx, gx64!), weightError,
                precision, device.ToString());
        }

        using (MixedPrecision.Enter(precision))
            return Compare(Gradients(x64, w64, b64, shape, float32, device, channelsLast, bf16, candidate));
    }

    // The output gradient given to both computations: the fixed pattern, rounded to bf16 when the candidate's output is
    // bf16 (the gradient reaching a bf16 map is bf16 in training).
    private static (Tensor Y, Tensor? Gx, Tensor Gw, Tensor? Gb) Gradients(Tensor x64, Tensor w64, Tensor? b64, ConvolutionShape shape,
        ScalarType dtype, Device device, bool channelsLast, bool bf16, Convolution convolution)
    {
        // The candidate sees its input in the layout training gives it.
        var x = x64.to(dtype).to(device);
        if (channelsLast) x = ActivationLayouts.ToChannelsLast(x);
        x.requires_grad_(shape.InputGradient);
        var w = w64.to(dtype).to(device).requires_grad_(true);
        var b = b64?.to(dtype).to(device).requires_grad_(true);
        var y = convolution(x, w, b, shape);
        var pattern = Pattern(y.shape, 0.9);
        if (bf16) pattern = RoundedToBFloat16(pattern);
        var gy = pattern.to(y.dtype).to(device);
        y.backward(new[] { gy });
        return (y.detach(), shape.InputGradient ? x.grad : null, w.grad!, b?.grad);
    }

    private static Tensor RoundedToBFloat16(Tensor t) => t.to(ScalarType.BFloat16).to(t.dtype);

    // Largest |a − b| over the largest |b|, in float64 on the CPU; NaN when a holds a non-finite value.
    private static double RelativeError(Tensor candidate, Tensor reference)
    {
        using var scope = NewDisposeScope();
        var a = candidate.detach().to(float64).cpu();
        if (!a.isfinite().all().item<bool>()) return double.NaN;
        double scale = reference.abs().max().item<double>();
        return (a - reference).abs().max().item<double>() / Math.Max(scale, 1e-30);
    }

    // A fixed pattern rather than random draws, so the check leaves the random generator (and so a seeded run) untouched.
    private static Tensor Pattern(long[] shape, double frequency) => ConvolutionRouting.Pattern(shape, frequency);

    private static string CpuName()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
            {
                var fields = File.ReadLines("/proc/cpuinfo").TakeWhile(l => l.Length > 0).Select(l => l.Split(':', 2))
                    .Where(p => p.Length == 2).GroupBy(p => p[0].Trim()).ToDictionary(g => g.Key, g => g.First()[1].Trim());
                string Get(string key) => fields.TryGetValue(key, out var v) ? v : "?";
                return $"{Get("model name")}, {Get("vendor_id")} family {Get("cpu family")} model {Get("model")}";
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return System.Environment.GetEnvironmentVariable("PROCESSOR_IDENTIFIER") ?? RuntimeInformation.ProcessArchitecture.ToString();
    }

    // oneDNN picks the best instruction set the CPU has, up to ONEDNN_MAX_CPU_ISA when that is set.
    private static string OneDnnIsa()
    {
        string detected;
        if (RuntimeInformation.ProcessArchitecture is not (Architecture.X64 or Architecture.X86))
            detected = RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();
        else if (System.Runtime.Intrinsics.X86.Avx512F.IsSupported && System.Runtime.Intrinsics.X86.Avx512BW.IsSupported
                 && System.Runtime.Intrinsics.X86.Avx512DQ.IsSupported && System.Runtime.Intrinsics.X86.Avx512F.VL.IsSupported)
            detected = "avx512_core";
        else if (System.Runtime.Intrinsics.X86.Avx2.IsSupported) detected = "avx2";
        else if (System.Runtime.Intrinsics.X86.Avx.IsSupported) detected = "avx";
        else detected = "sse41";
        var cap = System.Environment.GetEnvironmentVariable("ONEDNN_MAX_CPU_ISA");
        return string.IsNullOrWhiteSpace(cap) ? detected : $"{detected}, capped by ONEDNN_MAX_CPU_ISA={cap}";
    }

    private static string LibTorchVersion()
    {
        try { return torch.__version__; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or NotSupportedException) { return "unknown"; }
    }

    private static string TorchSharpVersion()
    {
        var assembly = typeof(torch).Assembly;
        var version = assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
            ?? assembly.GetName().Version?.ToString() ?? "unknown";
        int plus = version.IndexOf('+');
        return plus > 0 ? version[..plus] : version;
    }
}
