// How Man.ML's convolutions reach libtorch, and the two faults of libtorch 2.10's CPU convolutions (its bundled oneDNN
// 3.7.1) that it steers around; docs/BACKEND.md has the measurements.
//
// 1. Wrong input gradients: on some CPUs (measured: AMD EPYC family 26, AVX-512) the input gradient of a convolution
//    with kernel > 1 whose output channel count is not a multiple of 16 is wrong (errors as large as the gradient itself,
//    NaN in some runs), while its forward pass and weight gradient are right. Computing it with the weights zero-padded
//    to the next multiple of 16 output channels, and the extra outputs sliced away, gives the exact result; the
//    trained parameters keep their true shape. Whether this CPU needs it is probed once per process (a few
//    milliseconds), so unaffected machines keep the plain path. For very few outputs (InfoPro's 12→3 decoder layer)
//    padding computes five times the outputs needed; there the convolution is instead written as what it is, a channel
//    mixing per kernel tap (one batched matrix product, no convolution kernel involved) and a sum of the k² shifted
//    tap maps, which is faster than padding there (docs/BACKEND.md has the timings). It forms outputs·k²
//    full-resolution maps, so it is used up to 32 of them; beyond that padding is faster again.
// 2. A crash: the input gradient of a 1x1 convolution with stride > 1 kills the process with SIGFPE (an integer division
//    by zero inside oneDNN's kernel selection) for some channel pairs, among them ResNet-50/101/152's projection
//    shortcuts 512→1024 and 1024→2048. A 1x1 convolution with stride s and no padding equals a stride-1 1x1 convolution
//    of the input subsampled by s, which takes another kernel. A crash cannot be probed in-process, and the rewrite
//    costs nothing measurable, so it is applied on the CPU whenever an input gradient is needed.
//
// 3. Channels-last inputs (ActivationLayouts): oneDNN's 1x1 convolution of an NHWC tensor kills the process with the
//    same SIGFPE for some channel pairs, stride 1 included (measured: 512→1024). An NHWC tensor is a (B·H·W, C) matrix
//    already, so a 1x1 convolution of it is one matrix product with the (C, O) weight, whose result is the NHWC output;
//    no convolution kernel runs. It is used for every channels-last 1x1 convolution, forward included, on any device.
//
// 4. Wrong bf16 gradients: where libtorch runs bf16 convolutions natively (measured: AMD EPYC family 26, AVX-512 with
//    AVX512-BF16), the input gradient of a bf16 convolution whose input channel count is not a multiple of 16 is wrong
//    (15–50 % of its norm), and so are gradients through few output channels (InfoPro's 12→3 decoder: not finite).
//    Where the probe (once per process, in bf16) finds it, such convolutions run with input and output channels
//    zero-padded to multiples of 16 (extra channels add nothing to the true outputs; the true channels' gradients are
//    sliced back), or as shifted taps (no convolution kernel) when the outputs are few enough.
// 5. Garbage bf16 weight gradients on tiny inputs: on the same CPU, a bf16 convolution whose input is no larger than its
//    padding (a 3x3 stride-2 convolution of a 1x1 map, in InfoPro's ImageNet classifier on small images) gives weight
//    gradients that are NaN or 1e31 from run to run. Padding the input explicitly and convolving without padding computes
//    the same sums through a kernel that is right; it is done for every bf16 convolution on the CPU with such an input.
//
// The first two rewrites do not run when no input gradient is taken (inference, the first layer of a segment): forward passes and
// weight gradients are right on every CPU measured.

using Man.ML.Backend;
namespace Man.ML.Models;

/// <summary>Whether Man.ML steers its convolutions around the known libtorch CPU faults.</summary>
public enum ConvolutionWorkaround
{
    /// <summary>On the CPU: always rewrite strided 1x1 convolutions that need an input gradient; pad small output channel
    /// counts only where the once-per-process probe finds this CPU computes them wrongly. The default.</summary>
    [ChoiceName("auto")]
    Auto,

    /// <summary>Both rewrites on every device, whether needed or not (to check them on any machine).</summary>
    [ChoiceName("always")]
    Always,

    /// <summary>Plain libtorch convolutions everywhere (to see the backend's own behaviour).</summary>
    [ChoiceName("never")]
    Never,
}

/// <summary>How one convolution call is computed.</summary>
internal enum ConvolutionRoute
{
    /// <summary>libtorch's convolution as is.</summary>
    Direct,

    /// <summary>Weights zero-padded to a multiple of 16 output channels, extra outputs sliced away.</summary>
    PaddedOutputChannels,

    /// <summary>A strided 1x1 convolution as a stride-1 convolution of the subsampled input.</summary>
    SubsampledInput,

    /// <summary>Few output channels: a channel mixing per kernel tap (a matrix product), then the shifted tap maps summed.</summary>
    ShiftedTaps,

    /// <summary>A 1x1 convolution of a channels-last input as one matrix product (subsampled first when strided).</summary>
    PointwiseProduct,

    /// <summary>bf16: input and output channels zero-padded to multiples of 16 (input, weights and bias), the extra
    /// outputs sliced away.</summary>
    PaddedChannels,

    /// <summary>bf16 on inputs no larger than the padding: the input zero-padded first, the convolution unpadded.</summary>
    ExplicitPadding,
}

/// <summary>The convolution routes, the process's default policy and the probe that decides where the workaround is needed.</summary>
/// <remarks>The policy a convolution follows is its layer's (<see cref="Conv2dLayer.Workaround"/>), chosen when its
/// network is built (<see cref="BackendOptions"/>); <see cref="DefaultWorkaround"/> is only what is chosen when nothing is.</remarks>
internal static class ConvolutionRouting
{
    /// <summary>Output channels are padded to a multiple of this (oneDNN's AVX-512 block; a multiple of its AVX2 block of 8).</summary>
    public const int ChannelBlock = 16;

    /// <summary>The most tap maps (output channels × k²) the <see cref="ConvolutionRoute.ShiftedTaps"/> route forms.</summary>
    public const int MaxShiftedTapMaps = 2 * ChannelBlock;

    /// <summary>Environment variable read once for <see cref="DefaultWorkaround"/>: auto, always or never.</summary>
    public const string EnvironmentVariable = "MANML_CONV_WORKAROUND";

    private static readonly ProcessChoice<ConvolutionWorkaround> workaround =
        new(EnvironmentVariable, "The convolution workaround", ConvolutionWorkaround.Auto);
    private static readonly Lazy<bool> smallOutputFault = new(ProbeSmallOutputFault, LazyThreadSafetyMode.ExecutionAndPublication);
    private static readonly Lazy<bool> bfloat16SmallChannelFault = new(ProbeBFloat16SmallChannelFault, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The policy of networks built without one: the value of <c>MANML_CONV_WORKAROUND</c>, read once, else
    /// <see cref="ConvolutionWorkaround.Auto"/>. Read-only: a network or run chooses its own (<see cref="BackendOptions"/>,
    /// <c>TrainingOptions.ConvolutionWorkaround</c>).</summary>
    /// <exception cref="InvalidOptionException">When <c>MANML_CONV_WORKAROUND</c> holds another value.</exception>
    public static ConvolutionWorkaround DefaultWorkaround => workaround.Value;

    /// <summary>
    /// Whether this CPU's libtorch computes wrong input gradients for convolutions whose output channel count is not a
    /// multiple of 16 (probed once per process on first use, at 1 thread and at the current thread count).
    /// </summary>
    public static bool SmallOutputChannelFault => smallOutputFault.Value;

    /// <summary>
    /// Whether this CPU's libtorch computes wrong input gradients for bf16 convolutions whose input channel count is not a
    /// multiple of 16 (probed once per process on first use, in bf16).
    /// </summary>
    public static bool BFloat16SmallChannelFault => bfloat16SmallChannelFault.Value;

    /// <summary>Parses auto, always or never (case-insensitive).</summary>
    /// <exception cref="InvalidOptionException">Another value.</exception>
    public static ConvolutionWorkaround Parse(string text) => Choices.Parse<ConvolutionWorkaround>(text, "The convolution workaround");

    /// <summary>The route a convolution of <paramref name="weight"/> on <paramref name="input"/> takes under <paramref name="policy"/>.</summary>
    internal static ConvolutionRoute RouteFor(ConvolutionWorkaround policy, Tensor input, Tensor weight, int stride, int padding, int groups) =>
        RouteFor(policy, input.device_type, input.requires_grad && is_grad_enabled(), weight.shape, stride, padding, groups,
            ActivationLayouts.IsChannelsLast(input), input.dtype == ScalarType.BFloat16, Math.Min(input.shape[2], input.shape[3]));

    /// <summary>The route for a convolution described by its parts
    /// (see <see cref="RouteFor(ConvolutionWorkaround, Tensor, Tensor, int, int, int)"/>).</summary>
    /// <param name="policy">The policy.</param>
    /// <param name="device">Where it runs.</param>
    /// <param name="inputGradient">Whether a gradient with respect to its input will be computed.</param>
    /// <param name="weightShape">(out, in/groups, kh, kw).</param>
    /// <param name="stride">Stride (both directions).</param>
    /// <param name="padding">Zero padding (both directions).</param>
    /// <param name="groups">Groups.</param>
    /// <param name="channelsLast">Whether the input is laid out channels-last.</param>
    /// <param name="bfloat16">Whether it computes in bf16.</param>
    /// <param name="inputSide">The input's smaller spatial side.</param>
    internal static ConvolutionRoute RouteFor(ConvolutionWorkaround policy, DeviceType device, bool inputGradient, long[] weightShape,
        int stride, int padding, int groups, bool channelsLast = false, bool bfloat16 = false, long inputSide = long.MaxValue)
    {
        // The same arithmetic on a padded copy of a tiny input: cheap, so not probed (item 5 above).
        if (bfloat16 && policy != ConvolutionWorkaround.Never && device == DeviceType.CPU && padding > 0 && inputSide <= padding)
            return ConvolutionRoute.ExplicitPadding;
        if (channelsLast && policy != ConvolutionWorkaround.Never && groups == 1 && padding == 0 && weightShape[2] == 1 && weightShape[3] == 1)
            return ConvolutionRoute.PointwiseProduct;
        if (policy == ConvolutionWorkaround.Never || !inputGradient) return ConvolutionRoute.Direct;
        if (policy == ConvolutionWorkaround.Auto && device != DeviceType.CPU) return ConvolutionRoute.Direct;
        bool pointwise = weightShape[2] == 1 && weightShape[3] == 1;
        if (pointwise && stride > 1 && padding == 0) return ConvolutionRoute.SubsampledInput;
        if (bfloat16 && groups == 1 && (weightShape[1] % ChannelBlock != 0 || weightShape[0] % ChannelBlock != 0)
            && (policy == ConvolutionWorkaround.Always || BFloat16SmallChannelFault))
            return Shiftable(weightShape, stride, padding) ? ConvolutionRoute.ShiftedTaps : ConvolutionRoute.PaddedChannels;
        if (groups == 1 && weightShape[0] % ChannelBlock != 0
            && (policy == ConvolutionWorkaround.Always || SmallOutputChannelFault))
        {
            return Shiftable(weightShape, stride, padding) ? ConvolutionRoute.ShiftedTaps : ConvolutionRoute.PaddedOutputChannels;
        }
        return ConvolutionRoute.Direct;
    }

    // Few enough outputs for a channel mixing per tap: stride 1, an odd square kernel with "same" padding.
    private static bool Shiftable(long[] weightShape, int stride, int padding)
    {
        long k = weightShape[2];
        return stride == 1 && k == weightShape[3] && k % 2 == 1 && padding == k / 2 && weightShape[0] * k * k <= MaxShiftedTapMaps;
    }

    /// <summary>conv2d(input, weight, bias) with square stride and padding, computed along <paramref name="route"/>.</summary>
    internal static Tensor Convolve(Tensor input, Tensor weight, Tensor? bias, int stride, int padding, int groups, ConvolutionRoute route)
    {
        long[] strides = { stride, stride }, paddings = { padding, padding };
        switch (route)
        {
            case ConvolutionRoute.SubsampledInput:
            {
                using var scope = NewDisposeScope();
                var subsampled = input[.., .., TensorIndex.Slice(null, null, stride), TensorIndex.Slice(null, null, stride)]; // (B, C, ⌈H/s⌉, ⌈W/s⌉)
                return nn.functional.conv2d(subsampled, weight, bias, groups: groups).MoveToOuterDisposeScope();
            }
            case ConvolutionRoute.PaddedOutputChannels:
            {
                using var scope = NewDisposeScope();
                long outputs = weight.shape[0], extra = (outputs + ChannelBlock - 1) / ChannelBlock * ChannelBlock - outputs;
                var zeroWeights = zeros(new[] { extra, weight.shape[1], weight.shape[2], weight.shape[3] }, weight.dtype, weight.device);
                var paddedWeight = cat(new[] { weight, zeroWeights }, 0);
                var paddedBias = bias is null ? null : cat(new[] { bias, zeros(new[] { extra }, bias.dtype, bias.device) }, 0);
                var y = nn.functional.conv2d(input, paddedWeight, paddedBias, strides, paddings, groups: groups); // (B, out + extra, H', W')
                // A copy of the true outputs, so the padded map is freed now rather than kept by whatever saves its input.
                return y.narrow(1, 0, outputs).contiguous().MoveToOuterDisposeScope();
            }
            case ConvolutionRoute.PaddedChannels:
            {
                using var scope = NewDisposeScope();
                long inputs = input.shape[1], outputs = weight.shape[0];
                long extraIn = Padded(inputs) - inputs, extraOut = Padded(outputs) - outputs;
                var x = extraIn == 0 ? input
                    : cat(new[] { input, zeros(new[] { input.shape[0], extraIn, input.shape[2], input.shape[3] }, input.dtype, input.device) }, 1);
                var w = extraIn == 0 ? weight
                    : cat(new[] { weight, zeros(new[] { outputs, extraIn, weight.shape[2], weight.shape[3] }, weight.dtype, weight.device) }, 1);
                if (extraOut > 0) w = cat(new[] { w, zeros(new[] { extraOut, w.shape[1], w.shape[2], w.shape[3] }, w.dtype, w.device) }, 0);
                var b = bias is null || extraOut == 0 ? bias : cat(new[] { bias, zeros(new[] { extraOut }, bias.dtype, bias.device) }, 0);
                var y = nn.functional.conv2d(x, w, b, strides, paddings, groups: groups); // (B, padded out, H', W')
                return (extraOut == 0 ? y : y.narrow(1, 0, outputs).contiguous()).MoveToOuterDisposeScope();
            }
            case ConvolutionRoute.ExplicitPadding:
            {
                using var scope = NewDisposeScope();
                var padded = nn.functional.pad(input, new long[] { padding, padding, padding, padding }); // (B, C, H + 2p, W + 2p)
                return nn.functional.conv2d(padded, weight, bias, strides, new long[] { 0, 0 }, groups: groups).MoveToOuterDisposeScope();
            }
            case ConvolutionRoute.ShiftedTaps:
                return ShiftedTaps(input, weight, bias);
            case ConvolutionRoute.PointwiseProduct:
                return PointwiseProduct(input, weight, bias, stride);
            default:
                return nn.functional.conv2d(input, weight, bias, strides, paddings, groups: groups);
        }
    }

    // (B·H'·W', C) · (C, O) → (B·H'·W', O), which read as (B, H', W', O) and permuted is the (B, O, H', W') output with
    // NHWC strides. The product keeps the input matrix (a view of the input when it is channels-last already) and the
    // weight for backward, as the convolution would.
    private static Tensor PointwiseProduct(Tensor input, Tensor weight, Tensor? bias, int stride)
    {
        using var scope = NewDisposeScope();
        var x = stride == 1 ? input : input[.., .., TensorIndex.Slice(null, null, stride), TensorIndex.Slice(null, null, stride)];
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3], o = weight.shape[0];
        var rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c);                  // a view when x is channels-last
        var matrix = weight.view(o, c).t();                                       // (C, O)
        var y = bias is null ? rows.mm(matrix) : bias.addmm(rows, matrix);        // (B·H'·W', O)
        return y.view(b, h, w, o).permute(0, 3, 1, 2).MoveToOuterDisposeScope(); // (B, O, H', W'), NHWC strides
    }

    // y[o, i, j] = Σ over taps (dy, dx) of z[(dy, dx, o), i + dy − p, j + dx − p], zero outside, where z = W_tap · x mixes
    // channels for every tap at once (stride 1, padding p = k/2). The batched product keeps x and the weight for its
    // backward (x is kept by the layer before in any case); the tap maps and their shifts keep nothing.
    private static Tensor ShiftedTaps(Tensor input, Tensor weight, Tensor? bias)
    {
        using var scope = NewDisposeScope();
        long b = input.shape[0], c = input.shape[1], h = input.shape[2], w = input.shape[3];
        long o = weight.shape[0], k = weight.shape[2], p = k / 2;
        var mixing = weight.permute(2, 3, 0, 1).reshape(k * k * o, c);                          // rows (dy, dx, o)
        var taps = mixing.expand(b, k * k * o, c).bmm(input.reshape(b, c, h * w)).view(b, k * k * o, h, w).split(o, 1);
        Tensor? y = null;
        for (long dy = 0; dy < k; dy++)
            for (long dx = 0; dx < k; dx++)
            {
                long sy = dy - p, sx = dx - p; // y[i, j] takes tap[i + sy, j + sx]
                var shifted = nn.functional.pad(taps[dy * k + dx], new[] { Math.Max(-sx, 0), Math.Max(sx, 0), Math.Max(-sy, 0), Math.Max(sy, 0) })
                    .narrow(2, Math.Max(sy, 0), h).narrow(3, Math.Max(sx, 0), w);               // (B, O, H, W)
                y = y is null ? shifted : y.Plus(shifted);
            }
        if (bias is not null) y = y!.Plus(bias.view(1, -1, 1, 1));
        return y!.contiguous().MoveToOuterDisposeScope();
    }

    // Input gradients of a few small-output convolutions against float64, at 1 thread and at the current count. The inputs
    // are fixed patterns, not random draws, so the probe leaves the random generator (and so a seeded run) untouched.
    private static bool ProbeSmallOutputFault()
    {
        int threads = get_num_threads();
        try
        {
            foreach (int t in threads == 1 ? new[] { 1 } : new[] { 1, threads })
            {
                set_num_threads(t);
                foreach (var (cin, cout) in new[] { (16, 3), (16, 12), (12, 3) })
                    for (int trial = 0; trial < 2; trial++)
                        if (!InputGradientIsRight(cin, cout, side: 8, batch: 2, phase: trial))
                            return true;
            }
            return false;
        }
        finally
        {
            set_num_threads(threads);
        }
    }

    private static long Padded(long channels) => (channels + ChannelBlock - 1) / ChannelBlock * ChannelBlock;

    // The input gradient of bf16 3x3 convolutions with 12 and 3 input channels against float64 on the same bf16-rounded
    // operands (fixed patterns: the random generator is left alone).
    private static bool ProbeBFloat16SmallChannelFault()
    {
        using var scope = NewDisposeScope();
        using var grad = enable_grad();
        foreach (var (cin, cout, side) in new[] { (12, 16, 8), (3, 16, 9) })
        {
            var x64 = Pattern(new long[] { 2, cin, side, side }, 0.7).to(bfloat16).to(float64);
            var w64 = Pattern(new long[] { cout, cin, 3, 3 }, 1.3).TimesInPlace(0.1).to(bfloat16).to(float64);
            var gy64 = Pattern(new long[] { 2, cout, side, side }, 0.9).to(bfloat16).to(float64);
            var x = x64.to(bfloat16).requires_grad_(true);
            nn.functional.conv2d(x, w64.to(bfloat16), padding: new long[] { 1, 1 }).backward(new[] { gy64.to(bfloat16) });
            var reference = nn.functional.conv_transpose2d(gy64, w64, padding: new long[] { 1, 1 });
            var got = x.grad!.to(float64);
            if (!got.isfinite().all().item<bool>()) return true;
            // bf16 keeps 8 bits: a right kernel stays within a few 2⁻⁸ of the norm, the fault is off by 15 % and more.
            if ((got - reference).norm().item<double>() > 0.03 * reference.norm().item<double>()) return true;
        }
        return false;
    }

    /// <summary>Whether libtorch's plain float32 CPU convolution gives the float64 input gradient for a 3x3 convolution.</summary>
    internal static bool InputGradientIsRight(int inChannels, int outChannels, int side, int batch, int phase)
    {
        using var scope = NewDisposeScope();
        using var grad = enable_grad();
        var x64 = Pattern(new long[] { batch, inChannels, side, side }, 0.7 + phase);
        var w64 = Pattern(new long[] { outChannels, inChannels, 3, 3 }, 1.3 + phase).TimesInPlace(0.1);
        var gy64 = Pattern(new long[] { batch, outChannels, side, side }, 0.9 + phase);
        var x = x64.to(float32).requires_grad_(true);
        nn.functional.conv2d(x, w64.to(float32), padding: new long[] { 1, 1 }).backward(new[] { gy64.to(float32) });
        var reference = nn.functional.conv_transpose2d(gy64, w64, padding: new long[] { 1, 1 }); // d/dx of conv2d, in float64
        var got = x.grad!.to(float64);
        if (!got.isfinite().all().item<bool>()) return false;
        return (got - reference).abs().max().item<double>() <= 1e-3 * reference.abs().max().item<double>();
    }

    /// <summary>sin(frequency · i) over the elements, in float64: fixed test data that leaves the random generator alone.</summary>
    internal static Tensor Pattern(long[] shape, double frequency)
    {
        using var count = shape.Aggregate(1L, (a, b) => a * b).ToScalar();
        return arange(count, dtype: float64).TimesInPlace(frequency).sin_().view(shape);
    }
}
