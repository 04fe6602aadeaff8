// One training step of supervised local learning. Each segment runs forward, computes its local loss and runs its
// backward inside its own dispose scope, then hands only its detached output to the next segment. That discipline is
// what makes memory fall with K: once a segment's backward has run and its scope has closed, nothing of its graph is
// alive (ENGINEERING.md §Memory). MAN's EMA update follows each local backward; the single optimizer steps once all
// segments are done.
using Man.ML.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Man.ML.Local;

/// <summary>SGD settings (the paper's: Nesterov momentum 0.9, weight decay 1e-4).</summary>
public sealed record OptimizerSettings
{
    /// <summary>Initial learning rate. Default 0.1 (the linear-scaling rule's value for batch 128).</summary>
    public double LearningRate { get; init; } = 0.1;

    /// <summary>Momentum. Default 0.9.</summary>
    public double Momentum { get; init; } = 0.9;

    /// <summary>Weight decay on every trainable parameter. Default 1e-4.</summary>
    public double WeightDecay { get; init; } = 1e-4;

    /// <summary>Nesterov momentum. Default true.</summary>
    public bool Nesterov { get; init; } = true;
}

/// <summary>What one step measured.</summary>
/// <param name="Loss">Cross-entropy of the network's own head (the last segment's loss).</param>
/// <param name="Correct">Correct predictions of the network's head on the batch.</param>
/// <param name="Count">Batch size.</param>
/// <param name="SegmentLosses">Each segment's local loss (the last one equals <paramref name="Loss"/>).</param>
public sealed record StepResult(float Loss, long Correct, long Count, float[] SegmentLosses);

/// <summary>Trains a <see cref="UnitChainNetwork"/> split into K segments with a local-learning rule and, optionally, MAN.</summary>
public sealed class LocalTrainer : IDisposable
{
    private readonly ModuleList<AuxiliaryHead> heads = new();
    private readonly MomentumAuxiliaryNetwork? man;
    private readonly SGD optimizer;

    /// <summary>The network being trained.</summary>
    public UnitChainNetwork Network { get; }

    /// <summary>Its split.</summary>
    public SplitPlan Plan { get; }

    /// <summary>The local-learning rule.</summary>
    public ILocalLearningRule Rule { get; }

    /// <summary>MAN, when enabled.</summary>
    public MomentumAuxiliaryNetwork? Man => man;

    /// <summary>Auxiliary head of each segment but the last.</summary>
    public IReadOnlyList<AuxiliaryHead> Heads => heads.ToList();

    /// <summary>Sets up local learning of <paramref name="network"/> (moved to <paramref name="device"/>).</summary>
    /// <param name="network">The network; its units and head are trained in place.</param>
    /// <param name="plan">How it is split.</param>
    /// <param name="rule">The local-learning rule.</param>
    /// <param name="momentum">MAN settings, or null to train without MAN.</param>
    /// <param name="optimizerSettings">SGD settings.</param>
    /// <param name="device">Where every module and tensor lives.</param>
    public LocalTrainer(UnitChainNetwork network, SplitPlan plan, ILocalLearningRule rule, MomentumOptions? momentum,
        OptimizerSettings optimizerSettings, Device device)
    {
        if (plan.UnitCount != network.Units.Count)
            throw new ArgumentException($"The split covers {plan.UnitCount} units but the network has {network.Units.Count}.", nameof(plan));
        if (!rule.IsLocal && plan.K != 1)
            throw new ArgumentException($"Rule '{rule.Name}' trains the whole network as one segment, so K must be 1 (got {plan.K}).", nameof(plan));
        if (momentum is not null && plan.K == 1)
            throw new ArgumentException("MAN needs at least two segments (K ≥ 2): with K = 1 there is no next segment to copy.", nameof(momentum));
        Network = network;
        Plan = plan;
        Rule = rule;
        if (momentum is not null) man = new MomentumAuxiliaryNetwork(network, plan, momentum);
        for (int j = 0; j < plan.K - 1; j++)
        {
            // With MAN the head sees the next unit's output (its copies'), otherwise the segment's own output.
            int featuresOf = man is null ? plan.Segments[j].End - 1 : plan.NextUnit(j);
            heads.Add(rule.CreateHead(new HeadContext(network, plan, j, network.UnitInfos[featuresOf].Output)));
        }
        network.to(device);
        heads.to(device);
        man?.to(device);

        var trainable = network.parameters()
            .Concat(heads.parameters())
            .Concat(man?.TrainableParameters() ?? Enumerable.Empty<Parameter>())
            .ToList();
        optimizer = optim.SGD(trainable, optimizerSettings.LearningRate, optimizerSettings.Momentum, 0,
            optimizerSettings.WeightDecay, optimizerSettings.Nesterov);
    }

    /// <summary>The optimizer (one SGD over every trainable parameter; EMA copies excluded).</summary>
    public SGD Optimizer => optimizer;

    /// <summary>Current learning rate.</summary>
    public double LearningRate
    {
        get => optimizer.ParamGroups.First().LearningRate;
        set { foreach (var group in optimizer.ParamGroups) group.LearningRate = value; }
    }

    /// <summary>Parameters of the auxiliary heads and MAN copies (training-time only; gone at inference).</summary>
    public long AuxiliaryParameterCount() =>
        heads.parameters().Sum(p => p.numel()) + (man?.parameters().Sum(p => p.numel()) ?? 0);

    /// <summary>Puts every module in training or evaluation mode.</summary>
    public void SetTraining(bool training)
    {
        Network.train(training);
        heads.train(training);
        man?.train(training);
    }

    /// <summary>One mini-batch: every segment's local forward and backward in turn, then one optimizer step.</summary>
    /// <param name="images">Augmented, normalised images, (B, C, H, W), on the trainer's device.</param>
    /// <param name="labels">Class indices, (B), int64, on the trainer's device.</param>
    public StepResult Step(Tensor images, Tensor labels)
    {
        optimizer.zero_grad();
        var targets = new LocalTargets(labels, images);
        var segmentLosses = new float[Plan.K];
        long correct = 0;
        Tensor x = images;
        for (int j = 0; j < Plan.K; j++)
        {
            Tensor? handOver = null;
            using (var scope = NewDisposeScope())
            {
                var segment = Plan.Segments[j];
                man?.BeforeForward(j);
                var h = Network.ForwardUnits(x, segment.Start, segment.End);  // (B, C, H, W) of the segment's last unit
                Tensor loss;
                if (j == Plan.K - 1)
                {
                    var logits = Network.Head.call(h);                         // (B, classes)
                    loss = nn.functional.cross_entropy(logits, labels);
                    correct = logits.argmax(1).eq(labels).sum().item<long>();
                }
                else
                {
                    var y = man is null ? h : man[j].call(h);                  // MAN: the next unit's view of h
                    loss = heads[j].Loss(y, targets);
                    handOver = h.detach().MoveToOuterDisposeScope();           // gradient isolation
                }
                loss.backward();
                segmentLosses[j] = loss.item<float>();
            }
            if (j < Plan.K - 1) man?.AfterLocalBackward(j);
            if (!ReferenceEquals(x, images)) x.Dispose();
            x = handOver!;
        }
        optimizer.step();
        return new StepResult(segmentLosses[^1], correct, labels.shape[0], segmentLosses);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        optimizer.Dispose();
        heads.Dispose();
        man?.Dispose();
    }
}
