// The 2-D convolution every Man.ML module is built from: torch.nn.Conv2d's parameters, state-dict names ("weight",
// "bias"), shapes and default initialisation, with a forward pass that goes through ConvolutionRouting so that the
// libtorch CPU faults it knows of are steered around (see ConvolutionRouting.cs).
using TorchSharp.Modules;

namespace Man.ML.Models;

/// <summary>A 2-D convolution with square kernel, stride and zero padding, like <c>torch.nn.Conv2d</c>.</summary>
internal sealed class Conv2dLayer : nn.Module<Tensor, Tensor>
{
    // Field names are the state-dict names, as in torch.nn.Conv2d.
    private readonly Parameter weight;
    private readonly Parameter? bias;

    /// <summary>Input channels.</summary>
    public int InChannels { get; }

    /// <summary>Output channels.</summary>
    public int OutChannels { get; }

    /// <summary>Side of the square kernel.</summary>
    public int KernelSize { get; }

    /// <summary>Stride in both directions.</summary>
    public int Stride { get; }

    /// <summary>Zero padding on every side.</summary>
    public int Padding { get; }

    /// <summary>Groups of channels convolved separately.</summary>
    public int Groups { get; }

    /// <summary>The weight, (out, in / groups, k, k).</summary>
    public Parameter Weight => weight;

    /// <summary>The bias, (out), or null.</summary>
    public Parameter? Bias => bias;

    private ConvolutionWorkaround? workaround;

    /// <summary>How this convolution steers around libtorch's known CPU faults: its network's
    /// (<see cref="UnitChainNetwork.Workaround"/>) once the network or trainer it belongs to has given it, else
    /// <see cref="ConvolutionRouting.DefaultWorkaround"/>.</summary>
    public ConvolutionWorkaround Workaround => workaround ?? ConvolutionRouting.DefaultWorkaround;

    /// <summary>Sets <see cref="Workaround"/>; only the network that owns the layer, or its trainer, does.</summary>
    internal void UseWorkaround(ConvolutionWorkaround policy) => workaround = policy;

    /// <summary>Creates the layer with PyTorch's default initialisation (Kaiming-uniform weight with a = √5, bias uniform in ±1/√fan-in).</summary>
    /// <exception cref="ArgumentException">A size is not positive, or the channels are not divisible by the groups.</exception>
    public Conv2dLayer(int inChannels, int outChannels, int kernelSize, int stride = 1, int padding = 0, int groups = 1, bool bias = true)
        : base(nameof(Conv2dLayer))
    {
        if (inChannels < 1 || outChannels < 1 || kernelSize < 1 || stride < 1 || padding < 0 || groups < 1)
            throw new ArgumentException(
                $"Invalid convolution {inChannels}→{outChannels}, kernel {kernelSize}, stride {stride}, padding {padding}, groups {groups}.");
        if (inChannels % groups != 0 || outChannels % groups != 0)
            throw new ArgumentException($"Channels {inChannels}→{outChannels} are not divisible by {groups} groups.");
        (InChannels, OutChannels, KernelSize, Stride, Padding, Groups) = (inChannels, outChannels, kernelSize, stride, padding, groups);
        weight = new Parameter(empty(outChannels, inChannels / groups, kernelSize, kernelSize));
        if (bias) this.bias = new Parameter(empty(outChannels));
        using (no_grad())
        {
            // torch.nn.Conv2d.reset_parameters, in the same order (weight, then bias), so seeded models initialise as before.
            nn.init.kaiming_uniform_(weight, Math.Sqrt(5));
            if (this.bias is not null)
            {
                double bound = 1 / Math.Sqrt((double)inChannels / groups * kernelSize * kernelSize);
                nn.init.uniform_(this.bias, -bound, bound);
            }
        }
        RegisterComponents();
    }

    /// <summary>Output shape of this layer for an input of shape <paramref name="input"/>.</summary>
    public FeatureShape OutputShape(FeatureShape input) => LayerCost.ConvOutput(input, OutChannels, KernelSize, Stride, Padding);

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        // In a bf16 scope the operands are cast here, at the module boundary (MixedPrecision.cs); the route is chosen for
        // the tensors the kernel sees.
        var (input, w, b) = (MixedPrecision.Operand(x)!, MixedPrecision.Operand(weight)!, MixedPrecision.Operand(bias));
        var route = ConvolutionRouting.RouteFor(Workaround, input, w, Stride, Padding, Groups);
        ConvolutionTrace.Record(this, x);
        return MixedPrecision.Result(ConvolutionRouting.Convolve(input, w, b, Stride, Padding, Groups, route)); // (B, out, H', W')
    }

    /// <inheritdoc />
    public override string ToString() =>
        $"Conv2dLayer({InChannels}, {OutChannels}, kernel {KernelSize}, stride {Stride}, padding {Padding}" +
        $"{(Groups > 1 ? $", groups {Groups}" : "")}{(bias is null ? ", no bias" : "")})";
}

/// <summary>Collects, on the current thread, the input shape every <see cref="Conv2dLayer"/> sees (for the backend check).</summary>
internal static class ConvolutionTrace
{
    [ThreadStatic] private static List<(Conv2dLayer Layer, long[] InputShape, bool RequiresGrad)>? recording;

    public static void Record(Conv2dLayer layer, Tensor x) => recording?.Add((layer, x.shape, x.requires_grad && is_grad_enabled()));

    /// <summary>Runs <paramref name="action"/> and returns every convolution call it made, in order, with whether the
    /// call's input takes a gradient.</summary>
    public static List<(Conv2dLayer Layer, long[] InputShape, bool RequiresGrad)> Collect(Action action)
    {
        var previous = recording;
        recording = new List<(Conv2dLayer, long[], bool)>();
        try
        {
            action();
            return recording;
        }
        finally
        {
            recording = previous;
        }
    }
}
