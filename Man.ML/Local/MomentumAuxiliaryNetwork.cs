// The Momentum Auxiliary Network (MAN, Su et al., ECCV 2024; docs/METHOD.md §3). For every segment j but the last, let
// next(j) be the first unit of segment j+1. MAN gives segment j two fresh units of next(j)'s exact shape: LB[j],
// trainable (the paper's "learnable bias"), and EMA[j], whose parameters take no gradient and follow next(j) by an
// exponential moving average. Segment j's auxiliary head then sees y = LB[j](x) + EMA[j](x) instead of x, i.e. a
// picture of what the next segment will make of x. Gradients flow through both copies into segment j. At inference
// MAN disappears with the auxiliary heads.
using Man.ML.Models;
using Man.ML.Backend;

namespace Man.ML.Local;

/// <summary>The ablations of the paper's Tables 4 and 5.</summary>
public enum ManAblation
{
    /// <summary>Full MAN: y = LB(x) + EMA(x).</summary>
    [ChoiceName("none")]
    None,

    /// <summary>EMA copy only: y = EMA(x).</summary>
    [ChoiceName("ema-only")]
    EmaOnly,

    /// <summary>Learnable copy only: y = LB(x).</summary>
    [ChoiceName("lb-only")]
    LbOnly,

    /// <summary>
    /// Parameter copy without averaging (m = 0), the paper's Table 5 "Parameter" row: y = Copy(x) where Copy holds
    /// next(j)'s live parameters at every forward (no learnable copy, as in Table 5).
    /// </summary>
    [ChoiceName("param-copy")]
    ParameterCopy,
}

/// <summary>How MAN's copies start.</summary>
public enum ManInitialization
{
    /// <summary>Fresh random weights, initialised like every other layer (what the reference code ends up doing).</summary>
    [ChoiceName("random")]
    Random,

    /// <summary>A copy of next(j)'s current weights (the paper's "deepcopy").</summary>
    [ChoiceName("next")]
    Next,
}

/// <summary>How MAN combines its two copies into the features its auxiliary head sees.</summary>
public enum ManMix
{
    /// <summary>y = LB + EMA (MAN).</summary>
    [ChoiceName("sum")]
    Sum,

    /// <summary>MAN++: y = s·LB + (2 − s)·EMA with a trainable scalar s initialised to 1.</summary>
    [ChoiceName("learnable")]
    Learnable,
}

/// <summary>MAN settings.</summary>
public sealed record MomentumOptions
{
    /// <summary>Default EMA momentum m (the MAN README's 0.995).</summary>
    public const double DefaultMomentum = 0.995;

    /// <summary>Which branches exist and how EMA follows next(j). Default: full MAN.</summary>
    public ManAblation Ablation { get; init; } = ManAblation.None;

    /// <summary>How the copies start. Default: random, as the reference code.</summary>
    public ManInitialization Initialization { get; init; } = ManInitialization.Random;

    /// <summary>EMA decay m in θ_EMA ← m·θ_EMA + (1 − m)·θ_next (not SGD's momentum). Default 0.995.</summary>
    public double EmaDecay { get; init; } = DefaultMomentum;

    /// <summary>How the copies are combined. Default <see cref="ManMix.Sum"/> (y = LB + EMA).</summary>
    public ManMix Mix { get; init; } = ManMix.Sum;

    /// <summary>Whether the trainable LB copy exists.</summary>
    public bool HasLearnableCopy => Ablation is not (ManAblation.EmaOnly or ManAblation.ParameterCopy);

    /// <summary>Whether the gradient-free EMA copy exists.</summary>
    public bool HasEmaCopy => Ablation != ManAblation.LbOnly;

    /// <summary>Checks the settings: the EMA decay in [0, 1], and MAN++'s mix only with both copies.</summary>
    /// <param name="option">The option the settings were given as, named in the message.</param>
    /// <exception cref="InvalidOptionException">A setting, or their combination, is invalid.</exception>
    public void Validate(string option)
    {
        if (!(EmaDecay is >= 0 and <= 1))
            throw new InvalidOptionException(option, FormattableString.Invariant($"The EMA momentum must lie in [0, 1] (got {EmaDecay})."));
        if (Mix == ManMix.Learnable && Ablation != ManAblation.None)
            throw new InvalidOptionException(option,
                $"MAN++'s learnable mix needs both the LB and the EMA copy; it cannot be combined with the ablation '{Choices.Name(Ablation)}'.");
    }
}

/// <summary>MAN's two copies of next(j) for one segment j.</summary>
internal sealed class MomentumBranch : nn.Module<Tensor, Tensor>, IHasCost
{
    private readonly nn.Module<Tensor, Tensor>? learnable;
    private readonly nn.Module<Tensor, Tensor>? ema;
    private readonly TorchSharp.Modules.Parameter? mix;

    private static readonly Scalar Two = 2.0.ToScalar(); // long-lived: never finalized during a call (KeepAliveSgd.cs)

    /// <summary>MAN++'s mixing scalar s, when the learnable mix is on.</summary>
    public TorchSharp.Modules.Parameter? Mix => mix;

    /// <summary>The trainable copy LB[j], if the ablation keeps it.</summary>
    public nn.Module<Tensor, Tensor>? Learnable => learnable;

    /// <summary>The gradient-free copy EMA[j], if the ablation keeps it.</summary>
    public nn.Module<Tensor, Tensor>? Ema => ema;

    /// <summary>Builds the copies of unit <paramref name="nextUnit"/> of <paramref name="network"/>.</summary>
    public MomentumBranch(UnitChainNetwork network, int nextUnit, MomentumOptions options) : base(nameof(MomentumBranch))
    {
        options.Validate(nameof(options));
        var next = network.Units[nextUnit];
        if (options.HasLearnableCopy)
        {
            learnable = network.CreateUnitLike(nextUnit);
            if (options.Initialization == ManInitialization.Next) CopyParameters(next, learnable);
        }
        if (options.HasEmaCopy)
        {
            ema = network.CreateUnitLike(nextUnit);
            if (options.Initialization == ManInitialization.Next || options.Ablation == ManAblation.ParameterCopy)
                CopyParameters(next, ema);
            foreach (var p in ema.parameters()) p.requires_grad = false;
        }
        if (options.Mix == ManMix.Learnable) mix = new TorchSharp.Modules.Parameter(ones(1));
        RegisterComponents();
    }

    /// <summary>y = LB(x) + EMA(x), or the single branch an ablation keeps.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        Tensor y;
        // Not in place: the copies' ReLU outputs are saved for their backward.
        if (mix is not null)
        {
            var lb = learnable!.call(x);
            var s = mix.to(lb.dtype); // a bf16 scale for bf16 maps (MixedPrecision.cs); the identity in float32
            y = (s * lb).Plus(s.neg().add_(Two, HeldScalars.One) * ema!.call(x)); // MAN++: s·LB + (2 − s)·EMA
        }
        else if (learnable is not null && ema is not null) y = learnable.call(x).Plus(ema.call(x)); // (B, C', H', W')
        else y = (learnable ?? ema)!.call(x);
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Both copies keep the shared input once and their own tensors; their sum y is a new tensor (kept by the head that
    /// consumes it). Forward FLOPs are both copies'.
    /// </summary>
    public ModuleCost Cost(FeatureShape input)
    {
        var copies = new[] { learnable, ema }.OfType<IHasCost>().Select(c => c.Cost(input)).ToList();
        return new ModuleCost(copies[0].Output, copies.Max(c => c.SavedInput), copies.Sum(c => c.SavedInternal), false,
            copies.Sum(c => c.ForwardFlops));
    }

    /// <summary>Forward FLOPs of the gradient-free EMA copy alone (its backward computes input gradients only).</summary>
    public long EmaForwardFlops(FeatureShape input) => ema is IHasCost c ? c.Cost(input).ForwardFlops : 0;

    /// <summary>θ(EMA) ← m·θ(EMA) + (1 − m)·θ(next), parameters only (BatchNorm running statistics stay EMA's own).</summary>
    /// <param name="next">next(j)'s parameters in <c>parameters()</c> order: the live unit's, or a pipelined run's
    /// snapshot of them.</param>
    /// <param name="momentum">m.</param>
    public void UpdateEma(IEnumerable<Tensor> next, double momentum)
    {
        if (ema is null) return;
        using var noGrad = no_grad();
        // Explicit Scalars, alive until every call has returned (KeepAliveSgd.cs says why).
        using var m = momentum.ToScalar();
        using var rest = (1 - momentum).ToScalar();
        foreach (var (e, n) in ema.parameters().Zip(next))
            e.mul_(m).add_(n, rest);
    }

    /// <summary>Copies next(j)'s parameters (live or a snapshot) into EMA (the parameter-copy ablation, m = 0).</summary>
    public void CopyEmaFrom(IEnumerable<Tensor> next)
    {
        if (ema is not null) CopyParameters(next, ema);
    }

    private static void CopyParameters(nn.Module source, nn.Module target) => CopyParameters(source.parameters(), target);

    private static void CopyParameters(IEnumerable<Tensor> source, nn.Module target)
    {
        using var noGrad = no_grad();
        foreach (var (t, s) in target.parameters().Zip(source)) t.copy_(s);
    }
}

/// <summary>MAN for a whole split: one <see cref="MomentumBranch"/> per segment but the last.</summary>
internal sealed class MomentumAuxiliaryNetwork : nn.Module
{
    private readonly TorchSharp.Modules.ModuleList<MomentumBranch> branches;
    // The network's units are reached through a delegate, not a field: a module field would be registered as a child,
    // making the backbone part of MAN (its parameters, its device moves, its disposal).
    private readonly Func<int, nn.Module<Tensor, Tensor>> unitAt;
    private readonly SplitPlan plan;

    /// <summary>The settings.</summary>
    public MomentumOptions Options { get; }

    /// <summary>Branch of segment j (j from 0 to K−2).</summary>
    public MomentumBranch this[int segment] => branches[segment];

    /// <summary>Builds MAN's copies for every boundary of <paramref name="plan"/>.</summary>
    public MomentumAuxiliaryNetwork(UnitChainNetwork network, SplitPlan plan, MomentumOptions options)
        : base(nameof(MomentumAuxiliaryNetwork))
    {
        options.Validate(nameof(options));
        unitAt = i => network.Units[i];
        this.plan = plan;
        Options = options;
        branches = new TorchSharp.Modules.ModuleList<MomentumBranch>();
        for (int j = 0; j < plan.K - 1; j++) branches.Add(new MomentumBranch(network, plan.NextUnit(j), options));
        RegisterComponents();
    }

    /// <summary>The trainable parameters (the LB copies); the EMA copies are deliberately not among them.</summary>
    public IEnumerable<TorchSharp.Modules.Parameter> TrainableParameters() =>
        branches.SelectMany(b => (b.Learnable?.parameters() ?? Enumerable.Empty<TorchSharp.Modules.Parameter>())
            .Concat(b.Mix is null ? Enumerable.Empty<TorchSharp.Modules.Parameter>() : new[] { b.Mix }));

    /// <summary>Whether segment j's branch reads next(j)'s parameters (an EMA copy exists).</summary>
    public bool FollowsNextUnit => Options.HasEmaCopy;

    /// <summary>Called before segment j's forward: the parameter-copy ablation takes next(j)'s parameters.</summary>
    /// <param name="segment">j.</param>
    /// <param name="next">next(j)'s parameters to follow (a pipelined run's snapshot), or null for the live unit's.</param>
    public void BeforeForward(int segment, IReadOnlyList<Tensor>? next = null)
    {
        if (Options.Ablation == ManAblation.ParameterCopy)
            branches[segment].CopyEmaFrom(next ?? (IEnumerable<Tensor>)unitAt(plan.NextUnit(segment)).parameters());
    }

    /// <summary>Called after segment j's local backward and before the optimizer step: the EMA update.</summary>
    /// <param name="segment">j.</param>
    /// <param name="next">next(j)'s parameters to follow (a pipelined run's snapshot), or null for the live unit's.</param>
    public void AfterLocalBackward(int segment, IReadOnlyList<Tensor>? next = null)
    {
        if (Options.Ablation == ManAblation.ParameterCopy) return;
        branches[segment].UpdateEma(next ?? (IEnumerable<Tensor>)unitAt(plan.NextUnit(segment)).parameters(), Options.EmaDecay);
    }
}
