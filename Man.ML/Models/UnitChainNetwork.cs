// A network seen as an ordered chain of units (stem, blocks, ...) followed by a classification head.
// Local learning cuts this chain into segments; MAN builds fresh copies of single units. Models know nothing else of
// local learning.
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Models;

/// <summary>Shape of one sample's feature map: channels, height, width.</summary>
public readonly record struct FeatureShape(int Channels, int Height, int Width)
{
    /// <summary>Number of elements of one sample's feature map.</summary>
    public long Elements => (long)Channels * Height * Width;

    /// <inheritdoc />
    public override string ToString() => $"{Channels}x{Height}x{Width}";
}

/// <summary>What a unit of a chain is: its name, position and shapes.</summary>
/// <param name="Index">Position in the chain (0 is the stem).</param>
/// <param name="Name">Name in torchvision style, for example <c>stem</c> or <c>layer2[0]</c>.</param>
/// <param name="Stage">Stage the unit belongs to (0 for the stem, 1..3 for CIFAR ResNet stages).</param>
/// <param name="Input">Shape of the unit's input for one sample.</param>
/// <param name="Output">Shape of the unit's output for one sample.</param>
/// <param name="ActivationElements">
/// Estimated number of activation elements per sample the unit keeps for its backward pass (used to balance splits by
/// memory).
/// </param>
public sealed record UnitInfo(int Index, string Name, int Stage, FeatureShape Input, FeatureShape Output,
    long ActivationElements);

/// <summary>Which recipe a network was designed for; auxiliary heads and data defaults follow it.</summary>
public enum NetworkFamily
{
    /// <summary>Small-image networks (CIFAR-10, SVHN, STL-10): 3x3 stem, no max-pool.</summary>
    Cifar,

    /// <summary>ImageNet networks (224×224 inputs, stride 32): torchvision's ResNets, ResNeXts and VGGs.</summary>
    ImageNet,
}

/// <summary>
/// A classification network as an ordered chain of units plus a head (global pooling and a linear layer).
/// Running every unit in order and then the head is the network's forward pass.
/// </summary>
public abstract class UnitChainNetwork : nn.Module<Tensor, Tensor>
{
    private static int constructed;

    /// <summary>Creates the module with the given TorchSharp name.</summary>
    protected UnitChainNetwork(string name) : base(name) => Interlocked.Increment(ref constructed);

    /// <summary>Networks constructed in this process so far (a test checks that a run builds its network once).</summary>
    internal static int Constructed => Volatile.Read(ref constructed);

    /// <summary>Architecture name, for example <c>resnet32</c>.</summary>
    public abstract string Architecture { get; }

    /// <summary>Which recipe the network belongs to. Default <see cref="NetworkFamily.Cifar"/>.</summary>
    public virtual NetworkFamily Family => NetworkFamily.Cifar;

    /// <summary>Number of output classes.</summary>
    public abstract int ClassCount { get; }

    /// <summary>Shape of one input image.</summary>
    public abstract FeatureShape InputShape { get; }

    /// <summary>The units before the head, in order.</summary>
    public abstract IReadOnlyList<nn.Module<Tensor, Tensor>> Units { get; }

    /// <summary>Descriptions of <see cref="Units"/>, index for index.</summary>
    public abstract IReadOnlyList<UnitInfo> UnitInfos { get; }

    /// <summary>The classification head: features of the last unit to class logits.</summary>
    public abstract nn.Module<Tensor, Tensor> Head { get; }

    /// <summary>
    /// Builds a new, independently initialised unit with exactly the shape of unit <paramref name="index"/> (channels,
    /// stride, projection shortcut). MAN's copies are made with it.
    /// </summary>
    public abstract nn.Module<Tensor, Tensor> CreateUnitLike(int index);

    /// <summary>Runs units <paramref name="start"/> (inclusive) to <paramref name="end"/> (exclusive) in order. Images
    /// entering the first unit are laid out as <see cref="ActivationLayouts"/> asks (channels-last on the CPU by default),
    /// and every later activation keeps that layout.</summary>
    public Tensor ForwardUnits(Tensor input, int start, int end)
    {
        var x = start == 0 && end > 0 ? ActivationLayouts.ForNetwork(input, Family) : input;
        for (int i = start; i < end; i++)
        {
            var next = Units[i].call(x);
            if (!ReferenceEquals(x, input)) x.Dispose(); // an intermediate output: its storage lives on in autograd if needed
            x = next;
        }
        return x;
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor input)
    {
        using var scope = NewDisposeScope();
        var features = ForwardUnits(input, 0, Units.Count);
        return Head.call(features).MoveToOuterDisposeScope();
    }

    /// <summary>Number of elements of all parameters.</summary>
    public long ParameterCount() => parameters().Sum(p => p.numel());
}
