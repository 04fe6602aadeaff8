// The reference code's one initialisation loop, applied to every module it builds (backbone, auxiliary heads and MAN
// copies alike): He-normal (fan-out) convolutions, BatchNorm weight 1 and bias 0, linear layers left at PyTorch's
// defaults.

namespace Man.ML.Models;

/// <summary>The reference initialisation of convolutions and batch norms.</summary>
internal static class Initialization
{
    /// <summary>Initialises every convolution and batch-norm layer inside <paramref name="module"/>.</summary>
    public static void ApplyReference(nn.Module module)
    {
        using var noGrad = no_grad();
        foreach (var (_, m) in module.named_modules())
        {
            switch (m)
            {
                case Conv2dLayer conv:
                    var k = conv.Weight.shape; // (out, in/groups, kh, kw)
                    double std = Math.Sqrt(2.0 / (k[2] * k[3] * k[0]));
                    nn.init.normal_(conv.Weight, 0.0, std);
                    break;
                case TorchSharp.Modules.BatchNorm bn:
                    nn.init.ones_(bn.weight!);
                    nn.init.zeros_(bn.bias!);
                    break;
            }
        }
    }
}
