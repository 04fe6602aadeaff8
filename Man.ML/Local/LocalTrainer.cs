// One training step of supervised local learning. Each segment runs forward, computes its local loss and runs its
// backward inside its own dispose scope, then hands only its detached output to the next segment. That discipline is
// what makes memory fall with K: once a segment's backward has run and its scope has closed, nothing of its graph is
// alive (docs/PLATFORM.md §Memory). MAN's EMA update follows each local backward; the single optimizer steps once all
// segments are done.
using Man.ML.Models;
using TorchSharp.Modules;
using Man.ML.Backend;

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
/// <param name="Skipped">Whether the step was dropped because of a non-finite value (<see cref="NonFinitePolicy.SkipStep"/>).</param>
public sealed record StepResult(float Loss, long Correct, long Count, float[] SegmentLosses, bool Skipped = false);

/// <summary>What to do when a loss or gradient is NaN or infinite.</summary>
public enum NonFinitePolicy
{
    /// <summary>Stop training with <see cref="NonFiniteException"/> (the default).</summary>
    [ChoiceName("stop")]
    Stop,

    /// <summary>Drop the step (no optimizer update) and go on.</summary>
    [ChoiceName("skip-step")]
    SkipStep,
}

/// <summary>A segment's loss or a gradient became NaN or infinite.</summary>
public sealed class NonFiniteException(string what, int segment) : Exception($"{what} of segment {segment} is not finite.")
{
    /// <summary>What was not finite ("the local loss", "a gradient").</summary>
    public string What { get; } = what;

    /// <summary>The segment (for a gradient: the first whose parameters hold one).</summary>
    public int Segment { get; } = segment;
}

/// <summary>What one segment's part of a step produced.</summary>
/// <param name="Output">The segment's output, detached from its graph; null for the last segment.</param>
/// <param name="Loss">The segment's local loss.</param>
/// <param name="Correct">Correct predictions of the network's head (last segment only, else 0).</param>
internal sealed record SegmentResult(Tensor? Output, float Loss, long Correct);

/// <summary>Trains a <see cref="UnitChainNetwork"/> split into K segments with a local-learning rule and, optionally, MAN.</summary>
public sealed class LocalTrainer : IDisposable
{
    private readonly AuxiliaryModules auxiliary;
    private readonly ModuleList<AuxiliaryHead> heads;
    private readonly MomentumAuxiliaryNetwork? man;
    private readonly KeepAlive.SGD optimizer;
    private readonly IReadOnlyList<AuxiliaryHead> headView;
    private readonly List<(int Segment, Parameter Parameter)> checkedParameters;
    private readonly List<Parameter> trainable;

    // Everything that exists only for training, as one registered module tree (a ModuleList's items become children
    // only when an owning module registers its components).
    private sealed class AuxiliaryModules : nn.Module
    {
        public readonly ModuleList<AuxiliaryHead> heads;
        public readonly MomentumAuxiliaryNetwork? man;

        public AuxiliaryModules(IEnumerable<AuxiliaryHead> heads, MomentumAuxiliaryNetwork? man) : base(nameof(AuxiliaryModules))
        {
            this.heads = new ModuleList<AuxiliaryHead>(heads.ToArray());
            this.man = man;
            RegisterComponents();
        }
    }

    /// <summary>The network being trained.</summary>
    public UnitChainNetwork Network { get; }

    /// <summary>Its split.</summary>
    public SplitPlan Split { get; }

    /// <summary>The local-learning rule.</summary>
    public ILocalLearningRule Rule { get; }

    /// <summary>MAN, when enabled.</summary>
    internal MomentumAuxiliaryNetwork? Man => man;

    /// <summary>Auxiliary head of each segment but the last.</summary>
    public IReadOnlyList<AuxiliaryHead> Heads => headView;

    /// <summary>Every training-only module (auxiliary heads and MAN copies) as one module tree.</summary>
    public nn.Module AuxiliaryModule => auxiliary;

    /// <summary>Where every module and tensor of the run lives.</summary>
    public Device Device { get; }

    private readonly TrainingPrecision precision;

    /// <summary>
    /// The precision every segment's forward pass, local loss and backward pass compute in (docs/PRECISION.md): float32
    /// (the default), bf16 mixed precision or its float32 emulation; <see cref="TrainingPrecision.Auto"/> is resolved for
    /// <see cref="Device"/> when set. Parameters, gradients and optimizer state are float32 in every precision.
    /// </summary>
    /// <exception cref="InvalidOptionException">bf16 on a CPU without bf16 instructions.</exception>
    public TrainingPrecision Precision
    {
        get => precision;
        init => precision = BFloat16Support.Resolve(value, Device.type);
    }

    /// <summary>
    /// Sets up local learning of <paramref name="network"/> (moved to <paramref name="device"/>) with a rule of your own
    /// or one of Man.ML's; <see cref="Training.Trainer"/> builds the same engine from a resolved run.
    /// </summary>
    /// <param name="network">The network; its units and head are trained in place.</param>
    /// <param name="split">How it is split.</param>
    /// <param name="rule">The local-learning rule.</param>
    /// <param name="momentum">MAN settings, or null to train without MAN.</param>
    /// <param name="optimizerSettings">SGD settings.</param>
    /// <param name="device">Where every module and tensor lives.</param>
    /// <param name="normalization">How inputs were normalised (for rules that reconstruct the image); default CIFAR's.</param>
    /// <exception cref="InvalidOptionException">The rule, K and MAN do not go together, or the split is not of this network.</exception>
    public LocalTrainer(UnitChainNetwork network, SplitPlan split, ILocalLearningRule rule, MomentumOptions? momentum,
        OptimizerSettings optimizerSettings, Device device, Data.Normalization? normalization = null)
        : this(network, split, rule, momentum, optimizerSettings, device,
            Checked(network, split, rule, momentum, normalization ?? Data.Normalization.Cifar))
    {
    }

    private static IReadOnlyList<HeadContext> Checked(UnitChainNetwork network, SplitPlan split, ILocalLearningRule rule,
        MomentumOptions? momentum, Data.Normalization normalization)
    {
        if (split.UnitCount != network.Units.Count)
            throw new InvalidOptionException(nameof(split), $"The split covers {split.UnitCount} units but the network has {network.Units.Count}.");
        Training.TrainingOptions.CheckStructure(rule.IsLocal, rule.Name, split.K, momentum);
        return HeadContext.ForSegments(network, split, momentum is not null, normalization);
    }

    /// <summary>The engine of a resolved run: everything as the plan resolved it, nothing derived again.</summary>
    internal LocalTrainer(UnitChainNetwork network, SplitPlan split, ILocalLearningRule rule, MomentumOptions? momentum,
        OptimizerSettings optimizerSettings, Device device, IReadOnlyList<HeadContext> headContexts,
        IReadOnlyList<Device>? segmentDevices = null)
    {
        Network = network;
        Split = split;
        Rule = rule;
        Device = device;
        if (momentum is not null) man = new MomentumAuxiliaryNetwork(network, split, momentum);
        var headList = headContexts.Select(rule.CreateHead).ToList();
        auxiliary = network.ApplyWorkaroundTo(new AuxiliaryModules(headList, man));
        heads = auxiliary.heads;
        headView = headList.AsReadOnly();
        network.to(device);
        auxiliary.to(device);
        // A pipelined run places each stage's segments (units, head, MAN's copies) on the stage's device, before the
        // optimizer takes the parameters: moving a module replaces its parameters.
        if (segmentDevices is not null) Place(segmentDevices);

        trainable = network.parameters()
            .Concat(heads.parameters())
            .Concat(man?.TrainableParameters() ?? Enumerable.Empty<Parameter>())
            .ToList();
        optimizer = new KeepAlive.SGD(trainable, optimizerSettings.LearningRate, optimizerSettings.Momentum, 0,
            optimizerSettings.WeightDecay, optimizerSettings.Nesterov);
        // Every parameter that receives a gradient, with the segment it belongs to (units, head, MAN's copies).
        checkedParameters = Enumerable.Range(0, split.K).SelectMany(j =>
            Enumerable.Range(split.Segments[j].Start, split.Segments[j].Length).SelectMany(u => network.Units[u].parameters())
                .Concat(j < split.K - 1 ? heads[j].parameters() : network.Head.parameters())
                .Concat(j < split.K - 1 && man is not null ? man[j].parameters() : Enumerable.Empty<Parameter>())
                .Select(p => (j, p))).ToList();
    }

    private void Place(IReadOnlyList<Device> segmentDevices)
    {
        if (segmentDevices.Count != Split.K)
            throw new ArgumentException($"Expected a device for each of the {Split.K} segments (got {segmentDevices.Count}).", nameof(segmentDevices));
        var unitDevices = new Device[Network.Units.Count];
        for (int j = 0; j < Split.K; j++)
        {
            var d = segmentDevices[j];
            for (int u = Split.Segments[j].Start; u < Split.Segments[j].End; u++) unitDevices[u] = d;
            if (j < Split.K - 1)
            {
                heads[j].to(d);
                man?[j].to(d);
            }
        }
        Network.Place(unitDevices, segmentDevices[^1]);
    }

    /// <summary>Every parameter segments <paramref name="first"/> to <paramref name="last"/> train (units, the head that
    /// trains them, MAN's learnable copies), in the optimizer's order.</summary>
    internal IReadOnlyList<Parameter> TrainableParameters(int first, int last)
    {
        var mine = new HashSet<IntPtr>(checkedParameters.Where(c => c.Segment >= first && c.Segment <= last && c.Parameter.requires_grad)
            .Select(c => c.Parameter.Handle));
        return trainable.Where(p => mine.Contains(p.Handle)).ToList();
    }

    /// <summary>SGD's momentum buffer of <paramref name="parameter"/>, or null before its first step.</summary>
    internal Tensor? MomentumOf(Parameter parameter) => optimizer.MomentumOf(parameter);

    /// <summary>Gives <paramref name="parameter"/> a momentum buffer of zeros, to be filled, and returns it.</summary>
    internal Tensor ZeroMomentum(Parameter parameter) => optimizer.ZeroMomentum(parameter);

    /// <summary>What a step of segments <paramref name="first"/> to <paramref name="last"/> changes besides the trained
    /// parameters (batch-norm statistics, MAN's EMA copies): a dropped step puts it back.</summary>
    internal IReadOnlyList<Tensor> StepState(int first, int last)
    {
        var modules = new List<nn.Module>();
        for (int j = first; j <= last; j++)
        {
            for (int u = Split.Segments[j].Start; u < Split.Segments[j].End; u++) modules.Add(Network.Units[u]);
            if (j < Split.K - 1)
            {
                modules.Add(heads[j]);
                if (man is not null) modules.Add(man[j]);
            }
            else modules.Add(Network.Head);
        }
        return modules.SelectMany(m => m.buffers().Concat(m.parameters().Where(p => !p.requires_grad))).ToList();
    }

    /// <summary>Gradients of segments <paramref name="first"/> to <paramref name="last"/> checked at once.</summary>
    /// <exception cref="NonFiniteException">One is NaN or infinite.</exception>
    internal void CheckGradients(int first, int last)
    {
        var mine = checkedParameters.Where(c => c.Segment >= first && c.Segment <= last).ToList();
        if (FiniteGradients.FirstNonFinite(mine, FiniteGradients.ReadFromDevice) is int segment)
            throw new NonFiniteException("A gradient", segment);
    }

    /// <summary>The SGD step of <paramref name="parameters"/> alone, at <paramref name="learningRate"/> (a pipelined stage's).</summary>
    internal void StepParameters(IReadOnlyList<Parameter> parameters, double learningRate) =>
        optimizer.StepParameters(parameters, learningRate);

    /// <summary>The optimizer (one SGD over every trainable parameter; EMA copies excluded).</summary>
    public SGD Optimizer => optimizer;

    /// <summary>Current learning rate.</summary>
    public double LearningRate
    {
        get => optimizer.ParamGroups.First().LearningRate;
        set { foreach (var group in optimizer.ParamGroups) group.LearningRate = value; }
    }

    /// <summary>Parameters of the auxiliary heads and MAN copies (training-time only; gone at inference).</summary>
    public long AuxiliaryParameterCount() => auxiliary.parameters().Sum(p => p.numel());

    /// <summary>Puts every module in training or evaluation mode.</summary>
    public void SetTraining(bool training)
    {
        Network.train(training);
        auxiliary.train(training);
    }

    /// <summary>One mini-batch: every segment's local forward and backward in turn, then one optimizer step.</summary>
    /// <param name="images">Augmented, normalised images, (B, C, H, W), on the trainer's device.</param>
    /// <param name="labels">Class indices, (B), int64, on the trainer's device.</param>
    public StepResult Step(Tensor images, Tensor labels) => Step(images, labels, NonFinitePolicy.Stop);

    /// <summary>One mini-batch with a policy for NaN or infinite losses and gradients.</summary>
    /// <exception cref="NonFiniteException">A loss or gradient is not finite and the policy is
    /// <see cref="NonFinitePolicy.Stop"/>; no update was made.</exception>
    public StepResult Step(Tensor images, Tensor labels, NonFinitePolicy policy) =>
        Step(images, labels, policy, 1, labels.shape[0], null, 0, 0);

    /// <summary>
    /// One step of a batch that may be split into <paramref name="microBatches"/> micro-batches (each segment runs its
    /// forward and backward on every micro-batch in turn, gradients summed, batch norm seeing each micro-batch alone)
    /// and may be one rank's shard of a global batch of <paramref name="globalRows"/> rows (each micro-batch's loss is
    /// scaled by its share of the global batch, and <paramref name="averager"/> sums each segment's gradients across
    /// ranks as soon as its backward is done). With one micro-batch and no other rank it is the plain step, bit for bit.
    /// </summary>
    internal StepResult Step(Tensor images, Tensor labels, NonFinitePolicy policy, int microBatches, long globalRows,
        Distributed.GradientAverager? averager, int epoch, int step)
    {
        optimizer.zero_grad();
        long rows = labels.shape[0];
        int m = (int)Math.Clamp(microBatches, 1, rows);
        bool scaled = m > 1 || globalRows != rows;
        var inputs = new Tensor[m];
        var xs = new Tensor[m];
        var targets = new LocalTargets[m];
        var shares = new double[m];
        var weights = new double[m];
        for (int i = 0; i < m; i++)
        {
            long start = rows * i / m, n = rows * (i + 1) / m - start;
            var (x, y) = m == 1 ? (images, labels) : (images.narrow(0, start, n), labels.narrow(0, start, n));
            inputs[i] = xs[i] = x;
            targets[i] = new LocalTargets(y, x);
            shares[i] = (double)n / globalRows;
            weights[i] = (double)n / rows;
        }
        var segmentLosses = new float[Split.K];
        long correct = 0;
        // A dropped step must leave no trace: batch-norm statistics move during the forward passes, so keep them.
        // (and MAN's EMA copies move after each local backward).
        var buffers = policy == NonFinitePolicy.SkipStep
            ? Network.buffers().Concat(auxiliary.buffers()).Concat(auxiliary.parameters().Where(p => !p.requires_grad)).ToList()
            : null;
        var saved = buffers?.Select(b => b.detach().clone().DetachFromDisposeScope()).ToList();
        void Release()
        {
            for (int i = 0; i < m; i++)
                if (!ReferenceEquals(xs[i], inputs[i])) xs[i]?.Dispose();
            if (m > 1) foreach (var x in inputs) x.Dispose();
        }
        try
        {
            for (int j = 0; j < Split.K; j++)
            {
                double loss = 0;
                for (int i = 0; i < m; i++)
                {
                    var result = TrainSegment(j, xs[i], targets[i], null, scaled ? shares[i] : 1, firstMicroBatch: i == 0, lastMicroBatch: i == m - 1);
                    loss += m == 1 ? result.Loss : result.Loss * weights[i];
                    if (j == Split.K - 1) correct += result.Correct;
                    if (!ReferenceEquals(xs[i], inputs[i])) xs[i].Dispose();
                    xs[i] = result.Output!;
                }
                segmentLosses[j] = (float)loss;
                averager?.Start(j, step);
            }
            averager?.Finish(epoch, step);
            CheckGradients();
        }
        catch (NonFiniteException) when (policy == NonFinitePolicy.SkipStep)
        {
            Release();
            optimizer.zero_grad();
            using (no_grad()) foreach (var (buffer, copy) in buffers!.Zip(saved!)) buffer.copy_(copy);
            return new StepResult(float.NaN, 0, rows, segmentLosses, Skipped: true);
        }
        finally
        {
            if (saved is not null) foreach (var copy in saved) copy.Dispose();
        }
        Release();
        optimizer.step();
        return new StepResult(segmentLosses[^1], correct, rows, segmentLosses);
    }

    // Every gradient at once, with one read from the device (FiniteGradients).
    internal void CheckGradients()
    {
        if (FiniteGradients.FirstNonFinite(checkedParameters, FiniteGradients.ReadFromDevice) is int segment)
            throw new NonFiniteException("A gradient", segment);
    }

    /// <summary>
    /// Segment j's part of a step, in its own dispose scope: forward through its units, local loss (auxiliary head, or
    /// the network's head for the last segment), backward, then MAN's EMA update. Gradients accumulate; the optimizer
    /// is not stepped.
    /// </summary>
    /// <returns>The segment's output, detached (null for the last segment), its loss, and for the last segment the
    /// number of correct predictions.</returns>
    /// <param name="segment">j.</param>
    /// <param name="input">The segment's input.</param>
    /// <param name="targets">Labels and images.</param>
    /// <param name="nextUnitParameters">With MAN, what segment j's EMA copy follows: null for next(j)'s live parameters
    /// (the sequential step), or a pipelined run's snapshot of them, asked for only when it is read (after the local
    /// backward, or before the forward for the parameter-copy ablation).</param>
    /// <param name="lossScale">What the loss is multiplied by before its backward (a micro-batch's or a rank's share of
    /// the batch); 1 leaves it as it is.</param>
    /// <param name="firstMicroBatch">Whether this is the step's first pass of the segment (MAN's parameter-copy ablation
    /// copies then).</param>
    /// <param name="lastMicroBatch">Whether this is the step's last pass of the segment (MAN's EMA moves then, once a step).</param>
    internal SegmentResult TrainSegment(int segment, Tensor input, LocalTargets targets,
        Func<IReadOnlyList<Tensor>>? nextUnitParameters = null, double lossScale = 1, bool firstMicroBatch = true, bool lastMicroBatch = true)
    {
        Tensor? handOver = null;
        float lossValue;
        long correct = 0;
        using (var scope = NewDisposeScope())
        using (MixedPrecision.Enter(precision))
        {
            var range = Split.Segments[segment];
            if (firstMicroBatch && segment < Split.K - 1 && man?.Options.Ablation == ManAblation.ParameterCopy)
                man.BeforeForward(segment, nextUnitParameters?.Invoke());
            var h = Network.ForwardUnits(input, range.Start, range.End);  // (B, C, H, W) of the segment's last unit
            Tensor loss;
            if (segment == Split.K - 1)
            {
                var logits = Network.Head.call(h);                         // (B, classes)
                loss = nn.functional.cross_entropy(MixedPrecision.Float32(logits), targets.Labels); // losses in float32
                correct = logits.argmax(1).eq(targets.Labels).sum().item<long>();
            }
            else
            {
                var y = man is null ? h : man[segment].call(h);            // MAN: the next unit's view of h
                loss = heads[segment].Loss(y, targets);
                handOver = h.detach().MoveToOuterDisposeScope();           // gradient isolation
            }
            lossValue = loss.item<float>();
            if (!float.IsFinite(lossValue)) throw new NonFiniteException("The local loss", segment); // before any gradient is made
            (lossScale == 1 ? loss : loss.Times(lossScale)).backward();
        }
        if (lastMicroBatch && segment < Split.K - 1 && man is not null && man.Options.Ablation != ManAblation.ParameterCopy)
            man.AfterLocalBackward(segment, nextUnitParameters?.Invoke());
        return new SegmentResult(handOver, lossValue, correct);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        optimizer.Dispose();
        auxiliary.Dispose();
    }
}
