// What a module costs in a training step, computed from layer shapes: the activation elements it keeps for its backward
// pass (per sample) and its forward matrix FLOPs (convolutions and linear layers; element-wise work is not counted).
// Activations are split so that a chain counts each tensor once: a module's own input (kept by its first layer), the
// tensors made inside it, and whether its output is among them (so the next module's input is not counted again).
namespace Man.ML.Models;

/// <summary>The training-time cost of a module for one sample.</summary>
/// <param name="Output">Shape of its output.</param>
/// <param name="SavedInput">Elements of its input it keeps for backward (0 when no layer keeps the input).</param>
/// <param name="SavedInternal">Elements of tensors it creates and keeps for backward (its output included when kept).</param>
/// <param name="SavesOutput">Whether its output is among the kept tensors.</param>
/// <param name="ForwardFlops">Multiply-adds ×2 of its convolutions and linear layers in the forward pass.</param>
public readonly record struct ModuleCost(FeatureShape Output, long SavedInput, long SavedInternal, bool SavesOutput, long ForwardFlops);

/// <summary>A module that can state its <see cref="ModuleCost"/>.</summary>
public interface IHasCost
{
    /// <summary>The cost for one sample of shape <paramref name="input"/>.</summary>
    ModuleCost Cost(FeatureShape input);
}

/// <summary>Cost helpers for common layers.</summary>
public static class LayerCost
{
    /// <summary>Output shape of a convolution.</summary>
    public static FeatureShape ConvOutput(FeatureShape input, int outChannels, int kernel, int stride, int padding) =>
        new(outChannels, (input.Height + 2 * padding - kernel) / stride + 1, (input.Width + 2 * padding - kernel) / stride + 1);

    /// <summary>Forward FLOPs of a convolution (2 per multiply-add).</summary>
    public static long ConvFlops(FeatureShape input, FeatureShape output, int kernel, int groups = 1) =>
        2L * input.Channels / groups * output.Channels * kernel * kernel * output.Height * output.Width;

    /// <summary>Forward FLOPs of a linear layer.</summary>
    public static long LinearFlops(long inFeatures, long outFeatures) => 2L * inFeatures * outFeatures;
}
