// The memory layout of activations. A tensor keeps its (batch, channels, height, width) shape either way; only its
// strides differ: channels-first stores each channel's map contiguously (NCHW), channels-last stores each pixel's
// channels contiguously (NHWC). libtorch's CPU convolutions (oneDNN) take NHWC directly but reorder NCHW tensors into a
// blocked layout and back around every call, forward and backward; batch norm, ReLU, additions and pooling keep the
// layout of their input. So an image batch converted once at the network's entry (a copy of a few megabytes) makes
// every later activation channels-last. TorchSharp has no memory-format argument; a permuted copy gives the strides:
// x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2). Measured on a 2-core AMD EPYC (docs/BENCHMARKS.md): the
// forward and backward of a CIFAR ResNet-32 at batch 128 take about 0.6 of the NCHW time. Parameters, their gradients
// (autograd gives a gradient the layout of its parameter), checkpoints and outputs are unaffected; values agree to
// float32 rounding (another summation order inside the kernels).

namespace Man.ML.Models;

/// <summary>How activations are laid out in memory.</summary>
public enum ActivationLayout
{
    /// <summary>Channels-last for CIFAR-family networks on the CPU (the layouts measured and tested there); channels-first
    /// for ImageNet-family networks and on other devices. The default.</summary>
    [ChoiceName("auto")]
    Auto,

    /// <summary>Channels-first (NCHW) everywhere: libtorch's default layout.</summary>
    [ChoiceName("nchw")]
    ChannelsFirst,

    /// <summary>Channels-last (NHWC) on every device.</summary>
    [ChoiceName("nhwc")]
    ChannelsLast,
}

/// <summary>The layout rule, the process's default layout and the conversion applied at a network's entry.</summary>
/// <remarks>A network's layout is its own (<see cref="UnitChainNetwork.Layout"/>), chosen when it is built
/// (<see cref="BackendOptions"/>); <see cref="DefaultLayout"/> is only what is chosen when nothing is.</remarks>
internal static class ActivationLayouts
{
    /// <summary>Environment variable read once for <see cref="DefaultLayout"/>: auto, nchw or nhwc.</summary>
    public const string EnvironmentVariable = "MANML_LAYOUT";

    private static readonly ProcessChoice<ActivationLayout> layout = new(EnvironmentVariable, EnvironmentVariable, ActivationLayout.Auto);

    /// <summary>The layout of networks built without one: the value of <c>MANML_LAYOUT</c>, read once, else
    /// <see cref="ActivationLayout.Auto"/>. Read-only: a network chooses its own (<see cref="BackendOptions"/>).</summary>
    /// <exception cref="InvalidOptionException">When <c>MANML_LAYOUT</c> holds another value.</exception>
    public static ActivationLayout DefaultLayout => layout.Value;

    /// <summary>Whether a <paramref name="family"/> network's activations on <paramref name="device"/> are laid out
    /// channels-last under <paramref name="layout"/>.</summary>
    public static bool ChannelsLastOn(ActivationLayout layout, DeviceType device, NetworkFamily family) => layout switch
    {
        ActivationLayout.ChannelsLast => true,
        ActivationLayout.ChannelsFirst => false,
        _ => device == DeviceType.CPU && family == NetworkFamily.Cifar,
    };

    /// <summary>Whether a 4-D tensor has channels-last strides (channels contiguous, then width, height, batch).</summary>
    public static bool IsChannelsLast(Tensor x)
    {
        if (x.dim() != 4) return false;
        var s = x.stride();
        return s[1] == 1 && s[3] == x.shape[1] && s[2] == x.shape[1] * x.shape[3] && s[0] == x.shape[1] * x.shape[2] * x.shape[3];
    }

    /// <summary><paramref name="x"/> in the layout <paramref name="layout"/> asks for on its device for a
    /// <paramref name="family"/> network: itself when it already is, or is not a 4-D tensor, or channels-first is asked
    /// for; otherwise a channels-last copy with the same shape and values.</summary>
    public static Tensor ForNetwork(Tensor x, NetworkFamily family, ActivationLayout layout)
    {
        if (x.dim() != 4 || !ChannelsLastOn(layout, x.device_type, family) || IsChannelsLast(x)) return x;
        return ToChannelsLast(x);
    }

    /// <summary>A channels-last copy of a 4-D tensor (the same tensor when it already is).</summary>
    public static Tensor ToChannelsLast(Tensor x) =>
        IsChannelsLast(x) ? x : x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2); // (B, C, H, W), NHWC strides
}
