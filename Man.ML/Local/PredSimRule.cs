// PredSim (Nøkland & Eidnes, 2019) adapted to local blocks of CIFAR ResNets as in AugLocal (docs/REFERENCE.md §2.4):
// a similarity head (3x3 conv, then the similarity matrix of per-channel spatial standard deviations, matched by MSE to
// the similarity matrix of the one-hot labels) and a prediction head (average pooling, by doubling the kernel, down to
// at most 1,024 features, then a linear classifier); the local loss is 0.99·sim + 0.01·pred.
using Man.ML.Models;
using TorchSharp.Modules;
using Man.ML.Backend;

namespace Man.ML.Local;

/// <summary>The PredSim rule.</summary>
internal sealed class PredSimRule : ILocalLearningRule
{
    /// <summary>The rule's name.</summary>
    public const string RuleName = "predsim";

    /// <summary>Weight of the similarity loss (β).</summary>
    public const double SimilarityWeight = 0.99;

    /// <summary>Weight of the prediction loss (1 − β).</summary>
    public const double PredictionWeight = 0.01;

    /// <inheritdoc />
    public string Name => RuleName;

    /// <inheritdoc />
    public bool IsLocal => true;

    /// <inheritdoc />
    public AuxiliaryHead CreateHead(HeadContext context) => new PredSimHead(context.Features, context.Classes);

    /// <inheritdoc />
    public HeadPlan DescribeHead(HeadContext context) => new("predsim", FormattableString.Invariant($"{SimilarityWeight}·similarity + {PredictionWeight}·ce"));
}

/// <summary>PredSim's similarity and prediction heads on one segment's features.</summary>
internal sealed class PredSimHead : AuxiliaryHead, IHasCost
{
    /// <summary>Most features the prediction head's pooling leaves.</summary>
    public const int MaxPredictionFeatures = 1024;

    private readonly Conv2dLayer similarityConv;
    private readonly LinearLayer prediction;
    private readonly long[] poolKernel;
    private readonly int classes;

    /// <summary>Average-pooling kernel of the prediction head (kh, kw).</summary>
    public IReadOnlyList<long> PoolKernel => poolKernel;

    /// <summary>Creates the heads for features of shape <paramref name="input"/>.</summary>
    public PredSimHead(FeatureShape input, int classes) : base(nameof(PredSimHead))
    {
        this.classes = classes;
        poolKernel = PoolingKernel(input);
        similarityConv = new Conv2dLayer(input.Channels, input.Channels, 3, padding: 1, bias: false);
        long features = input.Channels * (input.Height / poolKernel[0]) * (input.Width / poolKernel[1]);
        prediction = new LinearLayer((int)features, classes);
        RegisterComponents();
        Initialization.ApplyReference(this);
    }

    /// <summary>Doubles kh, then kw, alternately, until C·(H/kh)·(W/kw) ≤ 1,024.</summary>
    public static long[] PoolingKernel(FeatureShape input)
    {
        long kh = 1, kw = 1;
        bool heightNext = true;
        while (input.Channels * (input.Height / kh) * (input.Width / kw) > MaxPredictionFeatures && (kh < input.Height || kw < input.Width))
        {
            if (heightNext && kh < input.Height) kh *= 2;
            else if (kw < input.Width) kw *= 2;
            else kh *= 2;
            heightNext = !heightNext;
        }
        return new[] { kh, kw };
    }

    /// <summary>The prediction head's class logits.</summary>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var pooled = poolKernel[0] * poolKernel[1] > 1 ? nn.functional.avg_pool2d(x, poolKernel) : x;
        return prediction.call(pooled.flatten(1)).MoveToOuterDisposeScope();   // (B, classes)
    }

    /// <inheritdoc />
    public override Tensor Loss(Tensor features, LocalTargets targets)
    {
        using var scope = NewDisposeScope();
        var similarity = SimilarityMatrix(MixedPrecision.Float32(similarityConv.call(features))); // (B, B), never bf16
        var oneHot = nn.functional.one_hot(targets.Labels, classes).to_type(similarity.dtype);
        var simLoss = nn.functional.mse_loss(similarity, SimilarityMatrix(oneHot).detach());
        var predLoss = nn.functional.cross_entropy(MixedPrecision.Float32(call(features)), targets.Labels);
        using var beta = PredSimRule.SimilarityWeight.ToScalar();   // explicit Scalars, alive through the calls (KeepAliveSgd.cs)
        using var rest = PredSimRule.PredictionWeight.ToScalar();
        return simLoss.mul(beta).PlusInPlace(predLoss.mul(rest)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Keeps its input (the similarity conv's), the conv output (for the standard deviations), the per-channel standard
    /// deviations and normalised rows, the B×B matrix (per sample: B entries; counted as the channel count here, a small
    /// term), the pooled features and the logits' softmax.
    /// </summary>
    public ModuleCost Cost(FeatureShape input)
    {
        long pooled = input.Channels * (input.Height / poolKernel[0]) * (input.Width / poolKernel[1]);
        long saved = input.Elements + 3L * input.Channels + pooled + classes;
        long flops = LayerCost.ConvFlops(input, input, 3) + LayerCost.LinearFlops(pooled, classes);
        return new ModuleCost(new FeatureShape(classes, 1, 1), input.Elements, saved, false, flops);
    }

    /// <summary>
    /// PredSim's similarity matrix: a 4-D input with more than 3 channels and height above 1 becomes each channel's
    /// standard deviation over spatial positions (B, C); anything else is flattened. Rows are centred, divided by their
    /// L2 norm (+1e-8), and R = X·Xᵀ clamped to [−1, 1].
    /// </summary>
    public static Tensor SimilarityMatrix(Tensor x)
    {
        using var scope = NewDisposeScope();
        Tensor rows = x.dim() == 4 && x.shape[1] > 3 && x.shape[2] > 1
            ? x.view(x.shape[0], x.shape[1], -1).std(2)                             // (B, C), unbiased as torch.std
            : x.reshape(x.shape[0], -1);
        var centred = rows - rows.mean(new long[] { 1 }, keepdim: true);
        var normalised = centred / centred.norm(1, keepdim: true).Plus(1e-8);
        return normalised.matmul(normalised.t()).Clamped(-1, 1).MoveToOuterDisposeScope();
    }
}
