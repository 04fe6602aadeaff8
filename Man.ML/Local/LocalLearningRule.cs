// What a supervised local-learning rule is: a way to build an auxiliary head for a segment's features and to turn the
// head's view of a mini-batch into that segment's local loss. The last segment never has one: the network's own head
// trains it with cross-entropy.
using Man.ML.Models;

namespace Man.ML.Local;

/// <summary>What a local loss may look at besides the features: the labels and the (augmented, normalised) images.</summary>
/// <param name="Labels">Class indices, (B), int64.</param>
/// <param name="Images">The network's input batch, (B, C, H, W).</param>
public sealed record LocalTargets(Tensor Labels, Tensor Images);

/// <summary>Where an auxiliary head sits.</summary>
/// <param name="Network">The network being trained.</param>
/// <param name="Split">Its split.</param>
/// <param name="Segment">Index of the segment the head trains (never the last).</param>
/// <param name="Features">Shape of the features the head consumes (with MAN: the output shape of the next unit).</param>
/// <param name="CopiedUnit">With MAN, the index of next(j), the unit whose copies feed the head; null without MAN.</param>
/// <param name="Normalization">How input images were normalised (reconstruction targets are de-normalised with it).</param>
public sealed record HeadContext(UnitChainNetwork Network, SplitPlan Split, int Segment, FeatureShape Features, int? CopiedUnit,
    Data.Normalization Normalization)
{
    /// <summary>Number of classes.</summary>
    public int Classes => Network.ClassCount;

    /// <summary>Whether the segment is trained with MAN.</summary>
    public bool WithMan => CopiedUnit is not null;

    /// <summary>
    /// The context of every segment's head but the last's: without MAN a head sees its segment's own output; with MAN
    /// it sees the next unit's output, through MAN's copies of that unit.
    /// </summary>
    /// <param name="network">The network being trained.</param>
    /// <param name="split">Its split.</param>
    /// <param name="withMan">Whether the run has MAN.</param>
    /// <param name="normalization">How input images are normalised.</param>
    public static IReadOnlyList<HeadContext> ForSegments(UnitChainNetwork network, SplitPlan split, bool withMan,
        Data.Normalization normalization) =>
        Enumerable.Range(0, split.K - 1).Select(j =>
        {
            int? copied = withMan ? split.NextUnit(j) : null;
            var features = network.UnitInfos[copied ?? split.Segments[j].End - 1].Output;
            return new HeadContext(network, split, j, features, copied, normalization);
        }).ToArray();
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

    /// <summary>What <see cref="CreateHead"/> builds for <paramref name="context"/>, for the run's plan (no module is built).</summary>
    HeadPlan DescribeHead(HeadContext context) => new(Name, Name);
}

/// <summary>One segment's auxiliary head as a run's plan states it.</summary>
/// <param name="Head">What the head is (for example <c>mlp-sr</c>, <c>2c2f</c>).</param>
/// <param name="Loss">The loss it trains the segment with (for example <c>ce</c>, <c>contrast</c>).</param>
public sealed record HeadPlan(string Head, string Loss)
{
    /// <summary>Weight of the reconstruction term (InfoPro), or null.</summary>
    public double? ReconstructionWeight { get; init; }

    /// <summary>Weight of the classification term (InfoPro), or null.</summary>
    public double? ClassificationWeight { get; init; }
}

/// <summary>The learning rules Man.ML ships.</summary>
public enum LearningRule
{
    /// <summary>End-to-end backprop (K = 1).</summary>
    [ChoiceName("e2e")]
    EndToEnd,

    /// <summary>DGL: a small classifier head per segment.</summary>
    [ChoiceName("dgl")]
    Dgl,

    /// <summary>InfoPro: reconstruction plus classification (cross-entropy or contrastive) per segment.</summary>
    [ChoiceName("infopro")]
    InfoPro,

    /// <summary>PredSim: similarity matching plus prediction per segment.</summary>
    [ChoiceName("predsim")]
    PredSim,
}

/// <summary>The rules Man.ML knows, by name.</summary>
public static class LocalLearningRules
{
    /// <summary>Names accepted by <see cref="Create(string, RuleSettings)"/>.</summary>
    public static IReadOnlyList<string> Names { get; } = Choices.Names<LearningRule>();

    /// <summary>Creates the rule called <paramref name="name"/> (case-insensitive) with its default settings.</summary>
    /// <exception cref="ArgumentException">No rule has that name.</exception>
    public static ILocalLearningRule Create(string name) => Create(name, new RuleSettings());

    /// <summary>Creates the rule called <paramref name="name"/> (case-insensitive) with <paramref name="settings"/>.</summary>
    /// <exception cref="InvalidOptionException">No rule has that name; the message lists the rules.</exception>
    public static ILocalLearningRule Create(string name, RuleSettings settings) => Create(Choices.Parse<LearningRule>(name, "The learning rule"), settings);

    /// <summary>Creates <paramref name="rule"/> with <paramref name="settings"/>.</summary>
    public static ILocalLearningRule Create(LearningRule rule, RuleSettings settings) => rule switch
    {
        LearningRule.EndToEnd => new EndToEndRule(),
        LearningRule.Dgl => new DglRule(settings.DglHead),
        LearningRule.InfoPro => new InfoProRule(settings.InfoPro),
        LearningRule.PredSim => new PredSimRule(),
        _ => throw new ArgumentOutOfRangeException(nameof(rule), rule, "Not a learning rule."),
    };
}

/// <summary>Settings of every rule that has some; each rule reads its own.</summary>
public sealed record RuleSettings
{
    /// <summary>DGL's auxiliary head. Default MLP-SR (AugLocal's adaptation).</summary>
    public DglHeadKind DglHead { get; init; } = DglHeadKind.MlpSr;

    /// <summary>InfoPro's settings; null members take the defaults of docs/METHOD.md §2.</summary>
    public InfoProSettings InfoPro { get; init; } = new();
}

/// <summary>End-to-end backprop: one segment, trained through the network's own head.</summary>
internal sealed class EndToEndRule : ILocalLearningRule
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

    /// <inheritdoc />
    public HeadPlan DescribeHead(HeadContext context) =>
        throw new InvalidOperationException("End-to-end training has a single segment and no auxiliary heads.");
}
