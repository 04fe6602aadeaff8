// The fully connected layer every Man.ML module is built from: torch.nn.Linear's parameters, state-dict names
// ("weight", "bias"), shapes and default initialisation (drawn in the same order, so a seeded model initialises as it
// did with TorchSharp's nn.Linear), with a forward pass that computes in the thread's precision (MixedPrecision.cs).
using TorchSharp.Modules;

namespace Man.ML.Models;

/// <summary>y = x·Wᵀ + b, like <c>torch.nn.Linear</c>.</summary>
internal sealed class LinearLayer : nn.Module<Tensor, Tensor>
{
    // Field names are the state-dict names, as in torch.nn.Linear.
    private readonly Parameter weight;
    private readonly Parameter? bias;

    /// <summary>Input features.</summary>
    public int InFeatures { get; }

    /// <summary>Output features.</summary>
    public int OutFeatures { get; }

    /// <summary>The weight, (out, in).</summary>
    public Parameter Weight => weight;

    /// <summary>The bias, (out), or null.</summary>
    public Parameter? Bias => bias;

    /// <summary>Creates the layer with PyTorch's default initialisation (Kaiming-uniform weight with a = √5, bias uniform
    /// in ±1/√in).</summary>
    /// <exception cref="ArgumentException">A size is not positive.</exception>
    public LinearLayer(int inFeatures, int outFeatures, bool hasBias = true) : base(nameof(LinearLayer))
    {
        if (inFeatures < 1 || outFeatures < 1) throw new ArgumentException($"Invalid linear layer {inFeatures}→{outFeatures}.");
        (InFeatures, OutFeatures) = (inFeatures, outFeatures);
        weight = new Parameter(empty(outFeatures, inFeatures));
        if (hasBias) bias = new Parameter(empty(outFeatures));
        using (no_grad())
        {
            nn.init.kaiming_uniform_(weight, Math.Sqrt(5));
            if (bias is not null)
            {
                double bound = 1 / Math.Sqrt(inFeatures);
                nn.init.uniform_(bias, -bound, bound);
            }
        }
        RegisterComponents();
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x) =>
        MixedPrecision.Result(nn.functional.linear(MixedPrecision.Operand(x)!, MixedPrecision.Operand(weight)!, MixedPrecision.Operand(bias)));

    /// <inheritdoc />
    public override string ToString() => $"LinearLayer({InFeatures}, {OutFeatures}{(bias is null ? ", no bias" : "")})";
}
