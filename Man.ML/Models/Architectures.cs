// Architecture names to networks: CIFAR ResNets (resnet32, resnet110, any resnet<6n+2>) and torchvision's ImageNet
// networks by their torchvision names. resnet50 and resnet152 name the ImageNet networks (both are also 6n+2).
namespace Man.ML.Models;

/// <summary>Creates networks by architecture name.</summary>
public static class Architectures
{
    private static readonly Dictionary<string, Func<int, int, UnitChainNetwork>> ImageNet = new()
    {
        ["resnet18"] = (c, s) => ImageNetResNet.ResNet18(c, s),
        ["resnet34"] = (c, s) => ImageNetResNet.ResNet34(c, s),
        ["resnet50"] = (c, s) => ImageNetResNet.ResNet50(c, s),
        ["resnet101"] = (c, s) => ImageNetResNet.ResNet101(c, s),
        ["resnet152"] = (c, s) => ImageNetResNet.ResNet152(c, s),
        ["resnext50_32x4d"] = (c, s) => ImageNetResNet.ResNeXt50_32x4d(c, s),
        ["resnext101_32x8d"] = (c, s) => ImageNetResNet.ResNeXt101_32x8d(c, s),
        ["vgg11_bn"] = (c, s) => new Vgg(11, c, s),
        ["vgg13_bn"] = (c, s) => new Vgg(13, c, s),
        ["vgg16_bn"] = (c, s) => new Vgg(16, c, s),
        ["vgg19_bn"] = (c, s) => new Vgg(19, c, s),
    };

    /// <summary>Names with a reference split table; any resnet&lt;6n+2&gt; is accepted too.</summary>
    public static IReadOnlyList<string> Known { get; } =
        new[] { "resnet32", "resnet110", "resnet34", "resnet101", "resnet152", "resnext101_32x8d", "vgg13_bn" };

    /// <summary>The ImageNet architectures, by torchvision name.</summary>
    public static IReadOnlyCollection<string> ImageNetNames => ImageNet.Keys;

    /// <summary>Which family <paramref name="name"/> belongs to (ImageNet names first; everything else is CIFAR).</summary>
    public static NetworkFamily FamilyOf(string name) => ImageNet.ContainsKey(name.ToLowerInvariant()) ? NetworkFamily.ImageNet : NetworkFamily.Cifar;

    /// <summary>The canonical (lower-case) name of <paramref name="name"/>, checked without building anything.</summary>
    /// <exception cref="ArgumentException">Unknown name; the message lists the known ones.</exception>
    public static string Canonical(string name)
    {
        var lower = name.Trim().ToLowerInvariant();
        if (ImageNet.ContainsKey(lower) || CifarDepth(lower) is not null) return lower;
        throw new ArgumentException(
            $"Unknown architecture '{name}': expected resnet32, resnet110 or resnet<6n+2> (CIFAR), or one of {string.Join(", ", ImageNet.Keys)} (ImageNet).",
            nameof(name));
    }

    private static int? CifarDepth(string lower) =>
        lower.StartsWith("resnet", StringComparison.Ordinal) && int.TryParse(lower.AsSpan(6), out int depth) && depth >= 8 && (depth - 2) % 6 == 0
            ? depth : null;

    /// <summary>Creates the network called <paramref name="name"/> with the process's default convolution workaround and
    /// activation layout (see <see cref="Create(string, int, int, BackendOptions?)"/>).</summary>
    /// <exception cref="ArgumentException">Unknown name.</exception>
    public static UnitChainNetwork Create(string name, int classes, int imageSize) => Create(name, classes, imageSize, null);

    /// <summary>
    /// Creates the network called <paramref name="name"/>: resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d,
    /// vgg11/13/16/19_bn (ImageNet layouts), or resnet&lt;6n+2&gt; (CIFAR layout: resnet32, resnet110, ...). It carries the
    /// convolution workaround and activation layout of <paramref name="backend"/> (null, or a null choice in it: the
    /// process default), and gives the workaround to the auxiliary heads and MAN copies a trainer builds for it.
    /// </summary>
    /// <exception cref="ArgumentException">Unknown name.</exception>
    public static UnitChainNetwork Create(string name, int classes = 10, int imageSize = 32, BackendOptions? backend = null)
    {
        var lower = Canonical(name);
        var network = ImageNet.TryGetValue(lower, out var create) ? create(classes, imageSize) : new CifarResNet(CifarDepth(lower)!.Value, classes, imageSize);
        return network.Use(backend ?? new BackendOptions());
    }
}
