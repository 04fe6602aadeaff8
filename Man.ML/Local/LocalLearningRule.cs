// What a supervised local-learning rule is: a way to build an auxiliary head for a segment's features and to turn the
// head's view of a mini-batch into that segment's local loss. The last segment never has one: the network's own head
// trains it with cross-entropy.
using Man.ML.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Man.ML.Local;

/// <summary>What a local loss may look at besides the features: the labels and the (augmented, normalised) images.</summary>
/// <param name="Labels">Class indices, (B), int64.</param>
/// <param name="Images">The network's input batch, (B, C, H, W).</param>
public sealed record LocalTargets(Tensor Labels, Tensor Images);

/// <summary>Where an auxiliary head sits.</summary>
/// <param name="Network">The network being trained.</param>
/// <param name="Plan">Its split.</param>
/// <param name="Segment">Index of the segment the head trains (never the last).</param>
/// <param name="Features">Shape of the features the head consumes (with MAN: the output shape of the next unit).</param>
/// <param name="CopiedUnit">With MAN, the index of next(j), the unit whose copies feed the head; null without MAN.</param>
/// <param name="Normalization">How input images were normalised (reconstruction targets are de-normalised with it).</param>
public sealed record HeadContext(UnitChainNetwork Network, SplitPlan Plan, int Segment, FeatureShape Features, int? CopiedUnit,
    Data.Normalization Normalization)
{
    /// <summary>Number of classes.</summary>
    public int Classes => Network.ClassCount;

    /// <summary>Whether the segment is trained with MAN.</summary>
    public bool WithMan => CopiedUnit is not null;
}

/// <summary>An auxiliary head: a small network on a segment's features with the loss that trains the segment.</summary>
public abstract class AuxiliaryHead : nn.Module<Tensor, Tensor>
{
    /// <summary>Creates the module with the given TorchSharp name.</summary>
    protected AuxiliaryHead(string name) : base(name) { }

    /// <summary>The segment's local loss (a scalar) for <paramref name="features"/>.</summary>
    public abstract Tensor Loss(Tensor features, LocalTargets targets);
}

/// <summary>A supervised local-learning rule.</summary>
public interface ILocalLearningRule
{
    /// <summary>Name used on the command line and in metrics, for example <c>dgl</c>.</summary>
    string Name { get; }

    /// <summary>Whether segments other than the last are trained by auxiliary heads (false for end-to-end).</summary>
    bool IsLocal { get; }

    /// <summary>Builds the auxiliary head of one segment.</summary>
    AuxiliaryHead CreateHead(HeadContext context);
}

/// <summary>The rules Man.ML knows, by name.</summary>
public static class LocalLearningRules
{
    /// <summary>Names accepted by <see cref="Create(string, RuleSettings)"/>.</summary>
    public static IReadOnlyList<string> Names { get; } = new[] { EndToEndRule.RuleName, DglRule.RuleName, InfoProRule.RuleName, PredSimRule.RuleName };

    /// <summary>Creates the rule called <paramref name="name"/> (case-insensitive) with its default settings.</summary>
    /// <exception cref="ArgumentException">No rule has that name.</exception>
    public static ILocalLearningRule Create(string name) => Create(name, new RuleSettings());

    /// <summary>Creates the rule called <paramref name="name"/> with <paramref name="settings"/>.</summary>
    /// <exception cref="ArgumentException">No rule has that name.</exception>
    public static ILocalLearningRule Create(string name, RuleSettings settings) => name.ToLowerInvariant() switch
    {
        EndToEndRule.RuleName => new EndToEndRule(),
        DglRule.RuleName => new DglRule(settings.DglHead),
        InfoProRule.RuleName => new InfoProRule(settings.InfoPro),
        PredSimRule.RuleName => new PredSimRule(),
        _ => throw new ArgumentException($"Unknown learning rule '{name}'; expected one of: {string.Join(", ", Names)}.", nameof(name)),
    };
}

/// <summary>Settings of every rule that has some; each rule reads its own.</summary>
public sealed record RuleSettings
{
    /// <summary>DGL's auxiliary head. Default MLP-SR (AugLocal's adaptation).</summary>
    public DglHeadKind DglHead { get; init; } = DglHeadKind.MlpSr;

    /// <summary>InfoPro's settings; null members take the defaults of METHOD.md §2.</summary>
    public InfoProSettings InfoPro { get; init; } = new();
}

/// <summary>End-to-end backprop: one segment, trained through the network's own head.</summary>
public sealed class EndToEndRule : ILocalLearningRule
{
    /// <summary>The rule's name.</summary>
    public const string RuleName = "e2e";

    /// <inheritdoc />
    public string Name => RuleName;

    /// <inheritdoc />
    public bool IsLocal => false;

    /// <inheritdoc />
    public AuxiliaryHead CreateHead(HeadContext context) =>
        throw new InvalidOperationException("End-to-end training has a single segment and no auxiliary heads.");
}
