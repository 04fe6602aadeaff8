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
internal readonly record struct ModuleCost(FeatureShape Output, long SavedInput, long SavedInternal, bool SavesOutput, long ForwardFlops);

/// <summary>A module that can state its <see cref="ModuleCost"/>.</summary>
internal interface IHasCost
{
    /// <summary>The cost for one sample of shape <paramref name="input"/>.</summary>
    ModuleCost Cost(FeatureShape input);
}

/// <summary>Cost helpers for common layers.</summary>
internal static class LayerCost
{
    /// <summary>Output shape of a convolution.</summary>
    public static FeatureShape ConvOutput(FeatureShape input, int outChannels, int kernel, int stride, int padding) =>
        new(outChannels, (input.Height + 2 * padding - kernel) / stride + 1, (input.Width + 2 * padding - kernel) / stride + 1);

    /// <summary>Forward FLOPs of a convolution (2 per multiply-add).</summary>
    public static long ConvFlops(FeatureShape input, FeatureShape output, int kernel, int groups = 1) =>
        2L * input.Channels / groups * output.Channels * kernel * kernel * output.Height * output.Width;

    /// <summary>Forward FLOPs of a linear layer.</summary>
    public static long LinearFlops(long inFeatures, long outFeatures) => 2L * inFeatures * outFeatures;

    /// <summary>
    /// The cost of a plain chain of layers (convolutions, linear layers, batch norms, ReLU/sigmoid, pooling, flatten):
    /// every tensor a convolution, linear layer or batch norm takes as input, or a ReLU or sigmoid returns, counted once.
    /// </summary>
    /// <param name="chain">The layers, run in order.</param>
    /// <param name="input">Shape of the chain's input.</param>
    /// <param name="inputAlreadyCounted">Whether the input is kept anyway (then <see cref="ModuleCost.SavedInput"/> is 0).</param>
    /// <exception cref="NotSupportedException">A layer of another kind.</exception>
    public static ModuleCost Chain(TorchSharp.Modules.Sequential chain, FeatureShape input, bool inputAlreadyCounted = false)
    {
        var layers = chain.children().ToList();
        var shape = input;
        long savedInput = 0, saved = 0, flops = 0;
        bool lastSaved = inputAlreadyCounted; // whether the current tensor is already counted
        bool first = true;
        foreach (var layer in layers)
        {
            bool keepsInput = layer is Conv2dLayer or LinearLayer or TorchSharp.Modules.BatchNorm;
            if (keepsInput && !lastSaved)
            {
                if (first) savedInput = shape.Elements; else saved += shape.Elements;
                lastSaved = true;
            }
            switch (layer)
            {
                case Conv2dLayer conv:
                {
                    var output = conv.OutputShape(shape);
                    flops += ConvFlops(shape, output, conv.KernelSize, conv.Groups);
                    shape = output;
                    lastSaved = false;
                    break;
                }
                case LinearLayer linear:
                    flops += LinearFlops(linear.InFeatures, linear.OutFeatures);
                    shape = new FeatureShape(linear.OutFeatures, 1, 1);
                    lastSaved = false;
                    break;
                case TorchSharp.Modules.BatchNorm:
                    lastSaved = false;  // a new tensor (its input was kept above)
                    break;
                case TorchSharp.Modules.ReLU or TorchSharp.Modules.Sigmoid or Float32Sigmoid:
                    saved += shape.Elements; // the output (in place on the previous tensor, which is then not kept)
                    lastSaved = true;
                    break;
                case TorchSharp.Modules.AdaptiveAvgPool2d:
                    shape = new FeatureShape(shape.Channels, 1, 1); // only global pooling occurs in heads
                    lastSaved = false;
                    break;
                case TorchSharp.Modules.Flatten:
                    shape = new FeatureShape((int)shape.Elements, 1, 1);
                    break;
                default:
                    throw new NotSupportedException($"LayerCost.Chain does not know {layer.GetType().Name}.");
            }
            first = false;
        }
        return new ModuleCost(shape, savedInput, saved, lastSaved, flops);
    }
}
