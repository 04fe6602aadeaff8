// How a network's computations reach libtorch: the convolution workaround (ConvolutionRouting) and the activation
// layout (ActivationLayouts). Both are chosen when the network is built and carried by it, down to each of its
// convolutions; neither changes what is computed beyond float32 rounding.
namespace Man.ML.Models;

/// <summary>How a network's convolutions and activations reach libtorch, chosen when it is built
/// (<see cref="Architectures.Create(string, int, int, BackendOptions)"/>).</summary>
public sealed record BackendOptions
{
    /// <summary>How its convolutions steer around libtorch's known CPU faults. Null (the default): the process default,
    /// <see cref="ConvolutionRouting.DefaultWorkaround"/> (<c>MANML_CONV_WORKAROUND</c>, else auto).</summary>
    public ConvolutionWorkaround? Workaround { get; init; }

    /// <summary>How its activations are laid out. Null (the default): the process default,
    /// <see cref="ActivationLayouts.DefaultLayout"/> (<c>MANML_LAYOUT</c>, else auto).</summary>
    public ActivationLayout? Layout { get; init; }
}
