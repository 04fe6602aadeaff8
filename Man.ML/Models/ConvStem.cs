// The stem of a ResNet, after torchvision's resnet.py: a convolution without bias, batch norm, ReLU and, for ImageNet
// inputs, a 3x3 stride-2 max-pool. CIFAR ResNets keep the image's resolution (3x3, stride 1, no pool); ImageNet ResNets
// reduce it four times (7x7 stride 2, then the pool). Its modules are named conv and bn in either case, so a state
// dict does not depend on which it is.
using TorchSharp.Modules;

namespace Man.ML.Models;

/// <summary>Stem of a ResNet: conv (no bias), batch norm, ReLU, then optionally max-pool 3x3 stride 2.</summary>
internal sealed class ConvStem : nn.Module<Tensor, Tensor>, IHasCost
{
    private readonly Conv2dLayer conv;
    private readonly BatchNormLayer bn;
    private readonly int kernelSize;

    private ConvStem(string name, Conv2dLayer conv, int outChannels, int kernelSize, bool maxPool) : base(name)
    {
        this.conv = conv;
        bn = BatchNormLayer.TwoDimensional(outChannels);
        this.kernelSize = kernelSize;
        MaxPool = maxPool;
        RegisterComponents();
    }

    /// <summary>A CIFAR ResNet's stem: conv 3x3 stride 1, batch norm, ReLU.</summary>
    public static ConvStem Cifar(int inChannels, int outChannels) =>
        new("CifarStem", CifarResNet.Conv3x3(inChannels, outChannels, 1), outChannels, 3, maxPool: false);

    /// <summary>An ImageNet ResNet's stem: conv 7x7 stride 2, batch norm, ReLU, max-pool 3x3 stride 2.</summary>
    public static ConvStem ImageNet(int inChannels, int outChannels) =>
        new("ImageNetStem", new Conv2dLayer(inChannels, outChannels, kernelSize: 7, stride: 2, padding: 3, bias: false),
            outChannels, 7, maxPool: true);

    /// <summary>Whether a 3x3 stride-2 max-pool follows the ReLU.</summary>
    public bool MaxPool { get; }

    /// <inheritdoc />
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = bn.call(conv.call(x)).relu_();                                               // (B, C, H', W')
        return (MaxPool ? nn.functional.max_pool2d(h, 3, 2, 1) : h).MoveToOuterDisposeScope(); // (B, C, H'/2, W'/2) pooled
    }

    /// <summary>Keeps its input (conv), the conv output (BN's input) and the ReLU output; with the pool also the pool's
    /// int64 indices (two float32 elements each) and its output.</summary>
    public ModuleCost Cost(FeatureShape input)
    {
        var convOut = conv.OutputShape(input);
        var flops = LayerCost.ConvFlops(input, convOut, kernelSize);
        if (!MaxPool) return new ModuleCost(convOut, input.Elements, 2 * convOut.Elements, true, flops);
        var output = LayerCost.ConvOutput(convOut, convOut.Channels, 3, 2, 1);
        return new ModuleCost(output, input.Elements, 2 * convOut.Elements + 3 * output.Elements, true, flops);
    }
}
