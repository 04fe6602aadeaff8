// A network seen as an ordered chain of units (stem, blocks, ...) followed by a classification head.
// Local learning cuts this chain into segments; MAN builds fresh copies of single units. Models know nothing else of
// local learning.

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
    private ConvolutionWorkaround? workaround;
    private ActivationLayout? layout;

    /// <summary>Creates the module with the given TorchSharp name.</summary>
    protected UnitChainNetwork(string name) : base(name)
    {
    }

    /// <summary>How its convolutions (and those of the auxiliary heads and MAN copies a trainer builds for it) steer
    /// around libtorch's known CPU faults: chosen when it was built (<see cref="BackendOptions.Workaround"/>), else
    /// <see cref="ConvolutionRouting.DefaultWorkaround"/>.</summary>
    public ConvolutionWorkaround Workaround => workaround ?? ConvolutionRouting.DefaultWorkaround;

    /// <summary>How its activations are laid out: chosen when it was built (<see cref="BackendOptions.Layout"/>), else
    /// <see cref="ActivationLayouts.DefaultLayout"/>.</summary>
    public ActivationLayout Layout => layout ?? ActivationLayouts.DefaultLayout;

    /// <summary>Whether its activations are laid out channels-last on <paramref name="device"/>.</summary>
    public bool ChannelsLastOn(DeviceType device) => ActivationLayouts.ChannelsLastOn(Layout, device, Family);

    /// <summary>Takes the choices of <paramref name="options"/> (what is null there stays the process default), for
    /// itself and every convolution it holds; called once, by whatever builds it.</summary>
    internal UnitChainNetwork Use(BackendOptions options)
    {
        workaround = options.Workaround;
        layout = options.Layout;
        if (workaround is not null) ApplyWorkaroundTo(this);
        return this;
    }

    /// <summary>Gives every convolution in <paramref name="module"/> this network's workaround: its own units, MAN's
    /// copies of them and the auxiliary heads built for it run the same policy (the one the backend check checks).</summary>
    internal T ApplyWorkaroundTo<T>(T module) where T : nn.Module
    {
        if (workaround is { } policy)
            foreach (var conv in module.modules().Prepend(module).OfType<Conv2dLayer>())
                conv.UseWorkaround(policy);
        return module;
    }

    /// <summary>Architecture name, for example <c>resnet32</c>.</summary>
    public abstract string Architecture { get; }

    /// <summary>Which recipe the network belongs to. Default <see cref="NetworkFamily.Cifar"/>.</summary>
    public virtual NetworkFamily Family => NetworkFamily.Cifar;

    // Set by each network's constructor. The modules themselves are registered through the network's own fields (their
    // names are the state dict's); these hold no module-typed field, so nothing is registered twice.

    /// <summary>Number of output classes.</summary>
    public int ClassCount { get; protected init; }

    /// <summary>Shape of one input image.</summary>
    public FeatureShape InputShape { get; protected init; }

    /// <summary>The units before the head, in order.</summary>
    public IReadOnlyList<nn.Module<Tensor, Tensor>> Units { get; protected init; } = Array.Empty<nn.Module<Tensor, Tensor>>();

    /// <summary>Descriptions of <see cref="Units"/>, index for index.</summary>
    public IReadOnlyList<UnitInfo> UnitInfos { get; protected init; } = Array.Empty<UnitInfo>();

    /// <summary>The classification head: features of the last unit to class logits.</summary>
    /// <remarks>Abstract rather than stored here: TorchSharp registers every module-typed field of the class
    /// hierarchy, and the head is registered by the network's own field.</remarks>
    public abstract nn.Module<Tensor, Tensor> Head { get; }

    /// <summary>
    /// Builds a new, independently initialised unit with exactly the shape of unit <paramref name="index"/> (channels,
    /// stride, projection shortcut). MAN's copies are made with it.
    /// </summary>
    public abstract nn.Module<Tensor, Tensor> CreateUnitLike(int index);

    /// <summary>Runs units <paramref name="start"/> (inclusive) to <paramref name="end"/> (exclusive) in order. Images
    /// entering the first unit are laid out as <see cref="Layout"/> asks (channels-last on the CPU by default),
    /// and every later activation keeps that layout.</summary>
    public Tensor ForwardUnits(Tensor input, int start, int end)
    {
        var x = start == 0 && end > 0 ? ActivationLayouts.ForNetwork(input, Family, Layout) : input;
        for (int i = start; i < end; i++)
        {
            if (placed && OnOtherDevice(x, Units[i]) is { } moved)
            {
                if (!ReferenceEquals(x, input)) x.Dispose();
                x = moved;
            }
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
        if (placed && OnOtherDevice(features, Head) is { } moved) features = moved;
        return Head.call(features).MoveToOuterDisposeScope();
    }

    private bool placed;

    /// <summary>
    /// Places unit i on <paramref name="unitDevices"/>[i] and the head on <paramref name="headDevice"/> (a pipelined
    /// run's stages); from then on the forward pass carries each activation to the device of the unit it enters.
    /// </summary>
    internal void Place(IReadOnlyList<Device> unitDevices, Device headDevice)
    {
        for (int i = 0; i < Units.Count; i++) Units[i].to(unitDevices[i]);
        Head.to(headDevice);
        placed = true;
    }

    // x moved to the device of module's parameters, or null when it is there already.
    private static Tensor? OnOtherDevice(Tensor x, nn.Module module)
    {
        var first = module.parameters().FirstOrDefault(); // the module's own parameter: not disposed here
        if (first is null || (first.device_type == x.device_type && first.device_index == x.device_index)) return null;
        return x.to(first.device);
    }

    /// <summary>Number of elements of all parameters.</summary>
    public long ParameterCount() => parameters().Sum(p => p.numel());
}
