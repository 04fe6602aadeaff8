// Architecture names to networks: resnet32, resnet110, or any resnet<6n+2>.
namespace Man.ML.Models;

/// <summary>Creates networks by architecture name.</summary>
public static class Architectures
{
    /// <summary>Names with a reference split table; any resnet&lt;6n+2&gt; is accepted too.</summary>
    public static IReadOnlyList<string> Known { get; } = new[] { "resnet32", "resnet110" };

    /// <summary>Creates the CIFAR network called <paramref name="name"/> (resnet32, resnet110, resnet&lt;6n+2&gt;).</summary>
    /// <exception cref="ArgumentException">The name is not a CIFAR ResNet of depth 6n+2.</exception>
    public static UnitChainNetwork Create(string name, int classes = 10, int imageSize = 32)
    {
        var lower = name.ToLowerInvariant();
        if (lower.StartsWith("resnet", StringComparison.Ordinal) && int.TryParse(lower.AsSpan(6), out int depth)
            && depth >= 8 && (depth - 2) % 6 == 0)
            return new CifarResNet(depth, classes, imageSize);
        throw new ArgumentException(
            $"Unknown architecture '{name}': expected resnet32, resnet110 or resnet<6n+2> (resnet8, resnet14, resnet20, resnet44, resnet56, ...).",
            nameof(name));
    }
}
