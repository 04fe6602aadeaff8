// What a run will do, resolved once from what the user asked (TrainingOptions) and the data's shape: the network and
// its units, the split and where it came from, each segment's head, MAN, the optimizer and schedule, the data recipe
// and the device. Every front end (CLI, ML.NET, bench, doctor, presets, resume) reads the run from here; its JSON is
// metrics.json's "config" and the fingerprint a checkpoint is resumed against, compared key by key.
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Man.ML.Data;
using Man.ML.Interop;
using Man.ML.Distributed;
using Man.ML.Local;
using Man.ML.Models;

namespace Man.ML.Training;

/// <summary>InfoPro's settings as resolved for the first segment.</summary>
/// <param name="Classifier">Auxiliary classifier, or null for InfoPro's ImageNet head.</param>
/// <param name="Loss">Loss of the classifier.</param>
/// <param name="Lambdas">λ (ixx1, ixy1, ixx2, ixy2).</param>
/// <param name="Schedule">How λ varies along the network.</param>
public sealed record InfoProPlan(AuxClassifierConfig? Classifier, InfoProLossMode Loss, InfoProLambdas Lambdas, LambdaSchedule Schedule);

/// <summary>A run as it will happen. Immutable; create it with <see cref="Trainer.Prepare"/>.</summary>
public sealed record RunPlan
{
    /// <summary>SGD's momentum (the reference code's; not MAN's EMA decay).</summary>
    public const double SgdMomentum = 0.9;

    /// <summary>Keys of <see cref="ToJson"/> a checkpoint may differ in and still be resumed: where it runs, not what it computes.</summary>
    public static IReadOnlySet<string> KeysFreeOnResume { get; } = new HashSet<string>
    {
        "device", "evaluation_batch_size", "data_workers", "pipeline_devices", "pipeline_threads",
    };

    /// <summary>The options it was resolved from.</summary>
    public required TrainingOptions Options { get; init; }

    /// <summary>Canonical architecture name.</summary>
    public required string Architecture { get; init; }

    /// <summary>The architecture's family.</summary>
    public required NetworkFamily Family { get; init; }

    /// <summary>Number of classes.</summary>
    public required int Classes { get; init; }

    /// <summary>Side of the network input.</summary>
    public required int ImageSize { get; init; }

    /// <summary>The network's units, by name, in order.</summary>
    public required IReadOnlyList<string> Units { get; init; }

    /// <summary>Parameters of the backbone.</summary>
    public required long BackboneParameters { get; init; }

    /// <summary>Index of each segment's last unit (K entries).</summary>
    public required IReadOnlyList<int> SegmentEnds { get; init; }

    /// <summary>Where the split came from.</summary>
    public required SplitSource SplitSource { get; init; }

    /// <summary>The reference table used, or null for a balanced split.</summary>
    public string? SplitTable { get; init; }

    /// <summary>The split as unit ranges, for example <c>stem..layer1[2] | layer1[3]..layer3[4]</c>.</summary>
    public required string SplitDescription { get; init; }

    /// <summary>Each segment's auxiliary head but the last's (the last is trained by the network's own head).</summary>
    public required IReadOnlyList<HeadPlan> Heads { get; init; }

    /// <summary>InfoPro's resolved settings (InfoPro runs only).</summary>
    public InfoProPlan? InfoPro { get; init; }

    /// <summary>The learning rate actually used (when none was given, the linear-scaling rule 0.1·B/128 on the global batch).</summary>
    public required double LearningRate { get; init; }

    /// <summary>Canonical device name.</summary>
    public required string Device { get; init; }

    /// <summary>The precision training computes in, resolved for the device (<see cref="TrainingOptions.Precision"/>;
    /// never auto).</summary>
    public required TrainingPrecision Precision { get; init; }

    /// <summary>The pipeline's stages (<see cref="TrainingOptions.PipelineStages"/>), or null for the sequential step.</summary>
    public PipelinePlan? Pipeline { get; init; }

    /// <summary>The MPI job a distributed run spreads over (<see cref="TrainingOptions.Distributed"/>), or null for one process.</summary>
    public DistributedPlan? Distributed { get; init; }

    /// <summary>Images per optimizer step over every rank: <see cref="TrainingOptions.BatchSize"/> times the ranks.</summary>
    public int GlobalBatchSize => Options.BatchSize * (Distributed is { StagesAsRanks: false } job ? job.Ranks : 1);

    /// <summary>What was loaded from <see cref="TrainingOptions.InitFrom"/> (null without one).</summary>
    public WeightsLoadReport? InitialWeights { get; init; }

    /// <summary>Number of segments.</summary>
    public int K => SegmentEnds.Count;

    /// <summary>The learning rule.</summary>
    public LearningRule Rule => Options.Rule;

    /// <summary>MAN's settings, or null.</summary>
    public MomentumOptions? Man => Options.Man;

    /// <summary>What a model trained by this run says of itself, for example <c>resnet32 dgl+man K=16, 3 epochs, seed 0</c>
    /// (with <c>, bf16</c> after it for a run trained in bf16).</summary>
    public string TrainedWith => $"{Architecture} {Choices.Name(Rule)}{(Man is null ? "" : "+man")} K={K}, {Options.Epochs} epochs, seed {Options.Seed}" +
        (Precision == TrainingPrecision.Float32 ? "" : $", {Choices.Name(Precision)}");

    /// <summary>
    /// What a model from this run says of itself once trained: <see cref="TrainedWith"/> when all the planned epochs ran
    /// and the model holds the last one's weights; otherwise, for example, <c>resnet8 dgl+man K=2, 2 of 4 epochs run,
    /// weights of epoch 1, seed 2</c>.
    /// </summary>
    /// <param name="epochsRun">Epochs that ran (early stopping may end a run before <c>Options.Epochs</c>).</param>
    /// <param name="weightsEpoch">The epoch whose weights the model holds (1-based).</param>
    public string DescribeTrained(int epochsRun, int weightsEpoch)
    {
        if (epochsRun < 1 || epochsRun > Options.Epochs)
            throw new ArgumentOutOfRangeException(nameof(epochsRun), epochsRun, $"must be 1 to {Options.Epochs}");
        if (weightsEpoch < 1 || weightsEpoch > epochsRun)
            throw new ArgumentOutOfRangeException(nameof(weightsEpoch), weightsEpoch, $"must be 1 to {epochsRun}");
        string epochs = epochsRun == Options.Epochs ? $"{epochsRun} epochs" : $"{epochsRun} of {Options.Epochs} epochs run";
        string weights = weightsEpoch == epochsRun ? "" : $", weights of epoch {weightsEpoch}";
        return $"{Architecture} {Choices.Name(Rule)}{(Man is null ? "" : "+man")} K={K}, {epochs}{weights}, seed {Options.Seed}" +
            (Precision == TrainingPrecision.Float32 ? "" : $", {Choices.Name(Precision)}");
    }

    /// <summary>One line: architecture, K, split, rule, MAN, and the precision when it is not float32.</summary>
    public string Summary => $"{Architecture}, K={K} ({(SplitTable is { } t ? $"reference split '{t}'" : "balanced split")}), " +
        $"rule {Choices.Name(Rule)}{(Man is null ? "" : " + MAN")}{(Precision == TrainingPrecision.Float32 ? "" : $", {Choices.Name(Precision)}")}" +
        (Pipeline is { } p ? $", pipelined in {p.Stages.Count} stages (depth {p.Depth})" : "") +
        (Distributed is { } d ? d.StagesAsRanks ? $", its stages on {d.Ranks} MPI ranks" : $", data-parallel over {d.Ranks} MPI ranks" : "") +
        (Options.MicroBatches > 1 ? $", {Options.MicroBatches} micro-batches" : "");

    /// <summary>
    /// Resolves <paramref name="options"/> for data of <paramref name="classes"/> classes at <paramref name="imageSize"/>
    /// (builds the network once, seeded, to read its units and split, and releases it). libtorch's global generator is
    /// left as it was.
    /// </summary>
    /// <exception cref="InvalidOptionException">An option, or a combination, is invalid.</exception>
    internal static RunPlan Resolve(TrainingOptions options, int classes, int imageSize)
    {
        options.Validate();
        using var built = Build(options, classes, imageSize);
        built.Network.Dispose();
        return built.Plan;
    }

    /// <summary>
    /// What <see cref="Build"/> made, and all the engine is built from: the plan, the seeded network, its split, the rule,
    /// each auxiliary head's context, the optimizer's settings, the device, and the generator state the run's heads and
    /// MAN's copies draw from (libtorch's generator right after the seeded network was built).
    /// </summary>
    internal sealed record Built(RunPlan Plan, UnitChainNetwork Network, SplitPlan Split, ILocalLearningRule Rule,
        IReadOnlyList<HeadContext> HeadContexts, OptimizerSettings Optimizer, Device Device, Tensor Generator) : IDisposable
    {
        public void Dispose() => Generator.Dispose();
    }

    /// <summary>
    /// The job a distributed run is part of (null for one process), checked against the options: a pipeline over MPI
    /// needs one rank per stage. Callers that write files check this before creating any.
    /// </summary>
    internal static DistributedPlan? DistributedOf(TrainingOptions options)
    {
        var distributed = options.Distributed == DistributedMode.Mpi
            ? DistributedPlan.OfThisJob() with { StagesAsRanks = options.ResolvedPipelineStages > 1 }
            : null;
        if (distributed is { StagesAsRanks: true } && distributed.Ranks != options.ResolvedPipelineStages)
            throw new InvalidOptionException(nameof(TrainingOptions.PipelineStages), FormattableString.Invariant(
                $"A pipeline over MPI runs one stage per rank: {options.ResolvedPipelineStages} stages need {options.ResolvedPipelineStages} ranks ") +
                FormattableString.Invariant($"(mpirun -np {options.ResolvedPipelineStages}), and this job has {distributed.Ranks}."));
        return distributed;
    }

    /// <summary>
    /// The one place a run is resolved from validated options: resolves the device, builds the seeded network, splits
    /// it, derives every head's context and describes the heads. The caller's state of libtorch's global generator is
    /// given back.
    /// </summary>
    internal static Built Build(TrainingOptions options, int classes, int imageSize)
    {
        if (classes < 2) throw new InvalidOptionException("Classes", $"Training needs at least 2 classes (got {classes}).");
        if (imageSize < 8) throw new InvalidOptionException(nameof(ImageSize), $"The image size must be at least 8 (got {imageSize}).");
        var device = Devices.Resolve(options.Device);
        foreach (var stageDevice in options.StageDevices ?? Array.Empty<string>()) Devices.Resolve(stageDevice, nameof(TrainingOptions.StageDevices));
        var precision = BFloat16Support.Resolve(options.Precision, device.type, nameof(TrainingOptions.Precision));
        var distributed = DistributedOf(options);
        int globalBatch = options.BatchSize * (distributed is { StagesAsRanks: false } ? distributed.Ranks : 1);
        var settings = options.RuleSettings with { InfoPro = options.RuleSettings.InfoPro with { Dataset = options.Dataset.Name } };
        var rule = LocalLearningRules.Create(options.Rule, settings);
        using var callers = get_rng_state();
        manual_seed(options.Seed);
        var network = Architectures.Create(options.Architecture, classes, imageSize, new BackendOptions { Workaround = options.ConvolutionWorkaround });
        try
        {
            // Before the split and the heads: the balancing rule reads nothing of the weights, but MAN's copies are
            // made from this network when the run starts.
            var from = options.InitFrom ?? (options.Pretrained is { } name
                ? PretrainedWeights.Fetch(PretrainedWeights.Find(options.Architecture, name), options.PretrainedCache)
                : null);
            var initial = from is not null ? PyTorchWeights.Load(network, from, replaceClassifierOnClassMismatch: true) : null;
            var split = SplitPlan.Create(network, options.K, options.SplitTable,
                rule.IsLocal ? b => BoundaryCost(options, network, rule, b) : null);
            var contexts = HeadContext.ForSegments(network, split, options.Man is not null, options.Normalization);
            InfoProPlan? infoPro = null;
            if (contexts.Count > 0 && rule is InfoProRule info)
            {
                var (classifier, mode, lambdas, schedule) = info.Resolve(contexts[0]);
                infoPro = new InfoProPlan(classifier, mode, lambdas, schedule);
            }
            var plan = new RunPlan
            {
                Options = options,
                Architecture = network.Architecture,
                Family = network.Family,
                Classes = classes,
                ImageSize = imageSize,
                Units = network.UnitInfos.Select(u => u.Name).ToArray(),
                BackboneParameters = network.ParameterCount(),
                SegmentEnds = split.Segments.Select(s => s.End - 1).ToArray(),
                SplitSource = split.Source,
                SplitTable = split.Table,
                SplitDescription = split.Describe(network),
                Heads = contexts.Select(rule.DescribeHead).ToArray(),
                InfoPro = infoPro,
                LearningRate = options.LearningRate ?? 0.1 * globalBatch / 128.0,
                Distributed = distributed,
                Device = Devices.Canonical(options.Device),
                Precision = precision,
                InitialWeights = initial,
                Pipeline = PipelinePlan.Resolve(options, split.K, () => EstimatedSegmentCosts(options, network, split, rule, contexts)),
            };
            var optimizer = new OptimizerSettings { LearningRate = plan.LearningRate, WeightDecay = options.WeightDecay, Momentum = SgdMomentum };
            return new Built(plan, network, split, rule, contexts, optimizer, device, get_rng_state());
        }
        catch
        {
            network.Dispose();
            throw;
        }
        finally
        {
            set_rng_state(callers);
        }
    }

    // Each segment's estimated step cost (StageBalance.Estimate), from heads and MAN's copies built on the side; the
    // generator state is restored so the run's initialisation does not change.
    private static IReadOnlyList<double> EstimatedSegmentCosts(TrainingOptions options, UnitChainNetwork network, SplitPlan split,
        ILocalLearningRule rule, IReadOnlyList<HeadContext> contexts)
    {
        using var state = get_rng_state();
        var heads = new List<AuxiliaryHead>();
        MomentumAuxiliaryNetwork? man = null;
        try
        {
            heads.AddRange(contexts.Select(rule.CreateHead));
            if (options.Man is not null) man = new MomentumAuxiliaryNetwork(network, split, options.Man);
            return SegmentCosts.Of(network, split, heads, man).Select(StageBalance.Estimate).ToArray();
        }
        finally
        {
            foreach (var head in heads) head.Dispose();
            man?.Dispose();
            set_rng_state(state);
        }
    }

    // What a segment ending after unit b keeps besides its units, for the balancing rule: MAN's copies of unit b + 1
    // (and their sum) and the auxiliary head on the features it sees, as the head itself states (IHasCost). Heads are
    // built on the side and discarded; the generator state is restored so the run's initialisation does not change.
    private static double BoundaryCost(TrainingOptions options, UnitChainNetwork network, ILocalLearningRule rule, int b)
    {
        var infos = network.UnitInfos;
        var man = options.Man;
        var twoSegments = SplitPlan.FromSegmentEnds(new[] { b, infos.Count - 1 }, infos.Count);
        var context = HeadContext.ForSegments(network, twoSegments, man is not null, options.Normalization)[0];
        var features = context.Features;
        int copies = man is null ? 0 : (man.HasLearnableCopy ? 1 : 0) + (man.HasEmaCopy ? 1 : 0);
        double cost = man is null ? 0 : copies * infos[b + 1].ActivationElements + features.Elements;
        using var state = get_rng_state();
        try
        {
            using var head = rule.CreateHead(context);
            if (head is IHasCost stated)
            {
                var c = stated.Cost(features);
                cost += c.SavedInput + c.SavedInternal;
            }
        }
        catch (ArgumentException)
        {
            // No head for this configuration (for example no λ known): the real build reports it.
        }
        finally
        {
            set_rng_state(state);
        }
        return cost;
    }

    /// <summary>
    /// The plan as JSON (snake_case keys, invariant numbers): metrics.json's <c>config</c> and a run checkpoint's
    /// fingerprint. Keys are written here by name, not derived from property names, so renaming a property does not
    /// change a plan's JSON.
    /// </summary>
    public JsonObject ToJson()
    {
        var o = Options;
        var man = o.Man;
        var aug = o.Augmentation;
        return new JsonObject
        {
            ["dataset"] = o.Dataset.Name,
            ["arch"] = Architecture,
            ["family"] = Family == NetworkFamily.ImageNet ? "imagenet" : "cifar",
            ["classes"] = Classes,
            ["image_size"] = ImageSize,
            ["units"] = Units.Count,
            ["parameters_backbone"] = BackboneParameters,
            ["k"] = K,
            ["split"] = SplitDescription,
            ["split_source"] = Choices.Name(SplitSource),
            ["split_table"] = SplitTable,
            ["segment_ends"] = new JsonArray(SegmentEnds.Select(e => (JsonNode)e).ToArray()),
            ["rule"] = Choices.Name(Rule),
            ["dgl_head"] = Rule == LearningRule.Dgl ? Choices.Name(o.RuleSettings.DglHead) : null,
            ["infopro"] = InfoPro is { } p ? new JsonObject
            {
                ["aux_config"] = p.Classifier is { } c ? Choices.Name(c) : "imagenet",
                ["loss"] = Choices.Name(p.Loss),
                ["lambda"] = p.Lambdas.ToString(),
                ["lambda_schedule"] = Choices.Name(p.Schedule),
            } : null,
            ["heads"] = new JsonArray(Heads.Select((h, j) => (JsonNode)new JsonObject
            {
                ["segment"] = j,
                ["head"] = h.Head,
                ["loss"] = h.Loss,
                ["reconstruction_weight"] = h.ReconstructionWeight,
                ["classification_weight"] = h.ClassificationWeight,
            }).ToArray()),
            ["man"] = man is not null,
            ["man_ablation"] = man is null ? null : Choices.Name(man.Ablation),
            ["man_init"] = man is null ? null : Choices.Name(man.Initialization),
            ["ema_momentum"] = man?.EmaDecay,
            ["man_mix"] = man is null ? null : Choices.Name(man.Mix),
            ["epochs"] = o.Epochs,
            ["batch_size"] = o.BatchSize,
            ["lr"] = LearningRate,
            ["weight_decay"] = o.WeightDecay,
            ["momentum"] = SgdMomentum,
            ["nesterov"] = true,
            ["schedule"] = "cosine-warmup",
            ["seed"] = o.Seed,
            ["augmentation"] = new JsonObject
            {
                ["padding"] = aug.Padding,
                ["reflect"] = aug.Reflect,
                ["flip"] = aug.Flip,
                // float32 values as their shortest decimal (0.4913726, not 0.49137255549430847)
                ["mean"] = new JsonArray(o.Normalization.Mean.Select(v => (JsonNode)(double)(decimal)v).ToArray()),
                ["std"] = new JsonArray(o.Normalization.Std.Select(v => (JsonNode)(double)(decimal)v).ToArray()),
            },
            ["init_from"] = o.InitFrom,
            ["pretrained"] = o.Pretrained,
            ["init_classifier"] = InitialWeights is { } w ? (w.HeadReplaced ? "replaced" : "loaded") : null,
            ["pipeline"] = Pipeline is { } pipeline ? new JsonObject
            {
                ["stages"] = new JsonArray(pipeline.Stages.Select(st => (JsonNode)new JsonArray(st.FirstSegment, st.LastSegment)).ToArray()),
                ["depth"] = pipeline.Depth,
            } : null,
            ["pipeline_devices"] = Pipeline is { } placed ? new JsonArray(placed.Stages.Select(st => (JsonNode)st.Device).ToArray()) : null,
            ["pipeline_threads"] = Pipeline?.ThreadsPerStage,
            ["distributed"] = Distributed is { } job
                ? job.StagesAsRanks ? new JsonObject { ["backend"] = "mpi", ["ranks"] = job.Ranks, ["stages_as_ranks"] = true }
                    : new JsonObject { ["backend"] = "mpi", ["ranks"] = job.Ranks }
                : null,
            ["micro_batches"] = o.MicroBatches == 1 ? null : o.MicroBatches,
            ["device"] = Device,
            ["precision"] = Choices.Name(Precision),
            ["evaluation_batch_size"] = o.EvaluationBatchSize,
            ["data_workers"] = o.DataWorkers,
        };
    }

    /// <summary>The keys in which two plans' JSON differ (order of keys and number formatting aside), each as "key: a ≠ b".</summary>
    /// <param name="saved">One plan's JSON (for example a checkpoint's).</param>
    /// <param name="current">The other's.</param>
    /// <param name="ignore">Keys not compared.</param>
    public static IReadOnlyList<(string Key, string Saved, string Current)> Differences(JsonObject saved,
        JsonObject current, IReadOnlySet<string>? ignore = null)
    {
        var differences = new List<(string, string, string)>();
        foreach (var key in saved.Select(p => p.Key).Union(current.Select(p => p.Key)))
        {
            if (ignore?.Contains(key) == true) continue;
            saved.TryGetPropertyValue(key, out var a);
            current.TryGetPropertyValue(key, out var b);
            if (!JsonNode.DeepEquals(Normalise(a), Normalise(b)))
                differences.Add((key, a?.ToJsonString() ?? "null", b?.ToJsonString() ?? "null"));
        }
        return differences;
    }

    // Numbers compare by value (1e-4 and 0.0001 are one number), whatever wrote them.
    private static JsonNode? Normalise(JsonNode? node) => node switch
    {
        null => null,
        JsonObject o => new JsonObject(o.Select(p => KeyValuePair.Create(p.Key, Normalise(p.Value)))),
        JsonArray a => new JsonArray(a.Select(Normalise).ToArray()),
        JsonValue v when v.GetValueKind() == JsonValueKind.Number => JsonValue.Create(double.Parse(v.ToJsonString(), CultureInfo.InvariantCulture)),
        _ => JsonNode.Parse(node.ToJsonString()),
    };
}
