// The names a network's tensors have in PyTorch. Man.ML's modules hold a network as a chain of units (units.N.*) and
// a head (head.*); PyTorch users know torchvision's names. The ImageNet ResNets and ResNeXts take torchvision's
// resnet.py names (conv1, bn1, layerS.B.*, fc), the VGGs torchvision's vgg.py names (features.I.*, classifier.I.*,
// with the indices of the ReLU, max-pool and dropout layers that torchvision's Sequential counts), and the CIFAR
// ResNets the same scheme as torchvision's ResNets with three stages (conv1, bn1, layer1..3.B.*, fc), as written in
// scripts/pytorch_interop.py (docs/INTEROP.md).
using Man.ML.Models;

namespace Man.ML.Interop;

/// <summary>Maps Man.ML's state-dict keys to PyTorch's (torchvision's where torchvision has the network).</summary>
internal static class PyTorchNames
{
    /// <summary>Every tensor of <paramref name="network"/>'s state dict as (Man.ML key, PyTorch key), in state-dict order.</summary>
    public static IReadOnlyList<(string ManKey, string PyTorchKey)> Of(UnitChainNetwork network)
    {
        var vggConvIndex = network is Vgg vgg ? VggFeatureIndices(vgg) : null;
        var names = new List<(string, string)>();
        foreach (var (key, _) in network.state_dict())
            names.Add((key, ToPyTorch(network, key, vggConvIndex)));
        return names;
    }

    /// <summary>The key of the classifier's last linear layer, the one whose shape follows the class count (without
    /// ".weight" / ".bias"), in PyTorch's names.</summary>
    public static string ClassifierPrefix(UnitChainNetwork network) => network is Vgg ? "classifier.6" : "fc";

    private static string ToPyTorch(UnitChainNetwork network, string key, int[]? vggConvIndex)
    {
        var parts = key.Split('.');
        if (parts.Length >= 3 && parts[0] == "units" && int.TryParse(parts[1], out int unit))
        {
            var rest = string.Join('.', parts.Skip(2));
            if (vggConvIndex is not null)
            {
                // VggLayer: conv (features.i), bn (features.i+1); its ReLU is features.i+2.
                int at = vggConvIndex[unit];
                return parts[2] switch
                {
                    "conv" => $"features.{at}.{string.Join('.', parts.Skip(3))}",
                    "bn" => $"features.{at + 1}.{string.Join('.', parts.Skip(3))}",
                    _ => throw Unexpected(network, key),
                };
            }
            if (unit == 0)
            {
                // The stem's conv and bn are torchvision's top-level conv1 and bn1.
                return parts[2] switch
                {
                    "conv" => "conv1." + string.Join('.', parts.Skip(3)),
                    "bn" => "bn1." + string.Join('.', parts.Skip(3)),
                    _ => throw Unexpected(network, key),
                };
            }
            // Blocks are named layerS[B] in UnitInfo; torchvision's state dict says layerS.B.
            var name = network.UnitInfos[unit].Name;
            int open = name.IndexOf('['), close = name.IndexOf(']');
            if (open < 0 || close < open) throw Unexpected(network, key);
            return $"{name[..open]}.{name[(open + 1)..close]}.{rest}";
        }
        if (parts.Length >= 3 && parts[0] == "head")
        {
            if (network is Vgg)
            {
                // Man.ML's VGG head has no dropout: Sequential(Linear, ReLU, Linear, ReLU, Linear) is torchvision's
                // classifier with its dropouts at 2 and 5 left out, so linear i sits at torchvision index 3i/2.
                if (parts[1] == "classifier" && int.TryParse(parts[2], out int index) && index % 2 == 0)
                    return $"classifier.{index / 2 * 3}.{string.Join('.', parts.Skip(3))}";
                throw Unexpected(network, key);
            }
            if (parts[1] == "fc") return "fc." + string.Join('.', parts.Skip(2));
        }
        throw Unexpected(network, key);
    }

    // torchvision's features Sequential: conv, bn, relu per convolution, one entry per max-pool.
    private static int[] VggFeatureIndices(Vgg vgg)
    {
        var indices = new int[vgg.Units.Count];
        int at = 0;
        for (int i = 0; i < vgg.Units.Count; i++)
        {
            if (((VggLayer)vgg.Units[i]).Pooled) at++;
            indices[i] = at;
            at += 3;
        }
        return indices;
    }

    private static InvalidOperationException Unexpected(UnitChainNetwork network, string key) =>
        new($"No PyTorch name is known for '{key}' of {network.Architecture}.");
}
