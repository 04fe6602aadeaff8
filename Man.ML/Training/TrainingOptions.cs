// Everything that defines a training run, with the paper's defaults where the paper has one.
using Man.ML.Data;
using Man.ML.Distributed;
using Man.ML.Local;

namespace Man.ML.Training;

/// <summary>Options of a local-learning training run.</summary>
public sealed record TrainingOptions
{
    /// <summary>Epochs when none are given, in the library, the ML.NET trainer and the samples alike: a short CPU run (the paper trains 400).</summary>
    public const int DefaultEpochs = 3;

    /// <summary>Data set kind (CIFAR-10, SVHN, STL-10, ImageNet): selects InfoPro's λ table entry. Default CIFAR-10.</summary>
    public DatasetKind Dataset { get; init; } = DatasetKind.Cifar10;

    /// <summary>Architecture: resnet32, resnet110 or resnet&lt;6n+2&gt;. Default resnet32.</summary>
    public string Architecture { get; init; } = "resnet32";

    /// <summary>
    /// Reference split table (man, manpp, infopro, dgl) or balanced; null: the architecture's default table at this K
    /// when there is one, else the balancing rule.
    /// </summary>
    public SplitTable? SplitTable { get; init; }

    /// <summary>
    /// A PyTorch state dict (torch.save's zip format or safetensors, with torchvision's names; docs/INTEROP.md) the
    /// backbone starts from instead of a fresh initialisation: fine-tuning. When its final classifier has another class
    /// count it is replaced by the network's own, freshly initialised under <see cref="Seed"/> (PyTorch's default for
    /// nn.Linear); MAN's copies are made from the loaded network (with <see cref="ManInitialization.Next"/>, copies of the
    /// loaded next unit). Null: no file. Default null.
    /// </summary>
    public string? InitFrom { get; init; }

    /// <summary>
    /// Published pretrained weights the backbone starts from, by name: <c>imagenet</c> (torchvision's IMAGENET1K_V1 of
    /// <see cref="Architecture"/>), a torchvision weights name such as <c>IMAGENET1K_V2</c>, or one an application
    /// registered (<see cref="Interop.PretrainedWeights.Register"/>). Downloaded once into <see cref="PretrainedCache"/>
    /// and verified against its published SHA-256 before every use; loaded as <see cref="InitFrom"/> loads a file (the
    /// classifier replaced for another class count). Not together with <see cref="InitFrom"/>. Default null.
    /// </summary>
    public string? Pretrained { get; init; }

    /// <summary>
    /// The folder pretrained weights are cached in; null: <c>$MANML_PRETRAINED_CACHE</c>, else
    /// <c>~/.cache/manml/pretrained</c> (<see cref="Interop.PretrainedWeights.CacheFolder"/>). Default null.
    /// </summary>
    public string? PretrainedCache { get; init; }

    /// <summary>Side of the network input for image-file data (ImageNet layout); null: 224. Data held in memory keeps its own size.</summary>
    public int? ImageSize { get; init; }

    /// <summary>
    /// The default of <see cref="MaxImagePixels"/>: 64 megapixels (8192×8192), above any camera photograph, while one
    /// decoded image of that size already takes 256 MiB (plus a 192 MiB planar copy) on each decoding thread.
    /// </summary>
    public const long DefaultMaxImagePixels = Data.ImageHeader.DefaultMaxPixels;

    /// <summary>
    /// Most pixels (width·height) an image file may have: its header is read before decoding, and a larger image is an
    /// error naming the file, its size and the limit, so a small file that decodes to gigabytes (a 1 MB PNG of
    /// 20000×20000) is refused before it takes the memory. Default <see cref="DefaultMaxImagePixels"/>.
    /// </summary>
    public long MaxImagePixels { get; init; } = DefaultMaxImagePixels;

    /// <summary>Background threads decoding image files, 0 to <see cref="MaxThreads"/>; 0: half the cores (at least one).</summary>
    public int DataWorkers { get; init; }

    /// <summary>
    /// Most threads a run may ask for, libtorch's (the command line's --threads) and the image decoders'
    /// (<see cref="DataWorkers"/>) alike: 4 per logical core, at least 64. More only adds switching and memory; a mistyped
    /// count (100000) would start that many threads.
    /// </summary>
    public static int MaxThreads { get; } = Math.Max(64, 4 * Environment.ProcessorCount);

    /// <summary>Number of gradient-isolated segments; 1 is end-to-end. Default 16 (every unit its own segment on ResNet-32).</summary>
    public int K { get; init; } = 16;

    /// <summary>Learning rule. Default DGL.</summary>
    public LearningRule Rule { get; init; } = LearningRule.Dgl;

    /// <summary>Settings of the learning rules (DGL head, InfoPro classifier, loss and λ). Default: the method's defaults (docs/METHOD.md).</summary>
    public RuleSettings RuleSettings { get; init; } = new();

    /// <summary>MAN settings, or null for no MAN. Default: MAN with the reference settings.</summary>
    public MomentumOptions? Man { get; init; } = new();

    /// <summary>Epochs. Default <see cref="DefaultEpochs"/> (3: a short CPU run; the paper trains 400).</summary>
    public int Epochs { get; init; } = DefaultEpochs;

    /// <summary>Mini-batch size. Default 128.</summary>
    public int BatchSize { get; init; } = 128;

    /// <summary>Initial learning rate; null means the linear-scaling rule 0.1·B/128 (0.8 at the paper's B = 1024).</summary>
    public double? LearningRate { get; init; }

    /// <summary>Weight decay. Default 1e-4.</summary>
    public double WeightDecay { get; init; } = 1e-4;

    /// <summary>Seed of weight initialisation, data order and augmentation. Default 0.</summary>
    public int Seed { get; init; }

    /// <summary>Device: cpu or cuda (cuda:N). Default cpu.</summary>
    public string Device { get; init; } = "cpu";

    /// <summary>How the network's convolutions steer around libtorch's known CPU faults (<see cref="Models.ConvolutionRouting"/>).
    /// Default null: <see cref="Models.ConvolutionRouting.DefaultWorkaround"/> (<c>MANML_CONV_WORKAROUND</c>, else auto).
    /// Not part of the run plan: every route computes the same convolution, to float32 rounding.</summary>
    public Models.ConvolutionWorkaround? ConvolutionWorkaround { get; init; }

    /// <summary>
    /// The precision training computes in (docs/PRECISION.md): fp32, bf16 mixed precision (bf16 convolutions and linear
    /// layers and bf16 activations; float32 master weights, optimizer state, batch-norm statistics, losses and MAN's EMA),
    /// auto (bf16 where the device computes it natively, else fp32), or bf16-emulated (bf16's numerics through float32
    /// kernels). bf16 on a CPU without bf16 instructions is refused. The trained model is float32 (its master weights)
    /// and is evaluated, scored and exported in float32. Default <see cref="Models.TrainingPrecision.Float32"/>.
    /// </summary>
    public Models.TrainingPrecision Precision { get; init; } = Models.TrainingPrecision.Float32;

    /// <summary><see cref="PipelineStages"/>'s value for "choose": one stage per device of <see cref="StageDevices"/> when
    /// given, else one per core (at most K).</summary>
    public const int AutoPipelineStages = 0;

    /// <summary>
    /// W, the number of pipeline stages (docs/PIPELINE.md): 1 trains the segments one after another in one thread (the
    /// sequential step); W ≥ 2 groups the K segments into W contiguous stages, each trained by its own worker thread on
    /// its own device with its own libtorch threads, stage s on batch t while stage s + 1 is on batch t − 1;
    /// <see cref="AutoPipelineStages"/> chooses. At most K. Default 1.
    /// </summary>
    public int PipelineStages { get; init; } = 1;

    /// <summary>
    /// d, the pipeline's depth: MAN's EMA copy at a stage boundary follows the next stage's first unit as it was d steps
    /// before the sequential step would read it (never before the epoch's first step), and a stage may run up to d + 1
    /// batches ahead of the next. 0 (lock-step) computes exactly the sequential run; larger values let stages run
    /// further apart. 0 to <see cref="MaxPipelineDepth"/>. Default 1. Ignored without a pipeline.
    /// </summary>
    public int PipelineDepth { get; init; } = 1;

    /// <summary>Largest <see cref="PipelineDepth"/>.</summary>
    public const int MaxPipelineDepth = 16;

    /// <summary>Each stage's device (cpu, cuda, cuda:N), one per stage; null: every stage on <see cref="Device"/>.
    /// Default null.</summary>
    public IReadOnlyList<string>? StageDevices { get; init; }

    /// <summary>libtorch threads of each stage's worker, 1 to <see cref="MaxThreads"/>; null: the cores shared out
    /// (cores / W, at least 1). Default null.</summary>
    public int? StageThreads { get; init; }

    /// <summary>
    /// Where the stages end: the last segment of every stage but the last, increasing (for K = 16 and W = 2, <c>[6]</c>
    /// gives segments 0–6 and 7–15). Null: the boundaries that minimise the slowest stage's estimated cost (matrix
    /// FLOPs and activation traffic of each segment, its units, MAN's copies and its head). Default null.
    /// </summary>
    public IReadOnlyList<int>? StageEnds { get; init; }

    /// <summary>
    /// How the run is spread over processes (docs/DISTRIBUTED.md): none, or data-parallel over the ranks of an MPI job
    /// (every rank runs the same options; <see cref="BatchSize"/> is each rank's share of a global batch R times as
    /// large, read in the single-process order; each segment's gradients are summed across ranks as soon as its local
    /// backward is done). With <see cref="PipelineStages"/> W above 1, the job's R = W ranks are the pipeline's stages
    /// instead: rank s trains stage s on whole batches of <see cref="BatchSize"/>. Default <see cref="DistributedMode.None"/>.
    /// </summary>
    public DistributedMode Distributed { get; init; } = DistributedMode.None;

    /// <summary>Default of <see cref="CollectiveTimeoutSeconds"/>: 300 s, longer than any step or evaluation of a sane run.</summary>
    public const double DefaultCollectiveTimeoutSeconds = 300;

    /// <summary>
    /// Longest a rank waits for the others at any exchange (gradients, metrics, batch-norm statistics) before it ends
    /// the run with a <see cref="DistributedException"/> naming itself and the step. It covers the other ranks'
    /// work in between (their evaluation included), so it must exceed the longest of those. Default
    /// <see cref="DefaultCollectiveTimeoutSeconds"/>.
    /// </summary>
    public double CollectiveTimeoutSeconds { get; init; } = DefaultCollectiveTimeoutSeconds;

    /// <summary>
    /// m: each batch (each rank's shard of it when distributed) runs as m micro-batches, each segment's forward and
    /// backward on one after another with their gradients summed before the optimizer steps: the same update with
    /// batch norm seeing each micro-batch alone, as m data-parallel ranks would, and each segment's graph held for one
    /// micro-batch at a time. 1 to <see cref="BatchSize"/> / 2. Default 1.
    /// </summary>
    public int MicroBatches { get; init; } = 1;

    /// <summary>Batch size for evaluation. Default 256.</summary>
    public int EvaluationBatchSize { get; init; } = 256;

    /// <summary>Training augmentation. Default CIFAR's (reflect-pad 4, crop, flip, CIFAR normalisation).</summary>
    public ImageAugmentation Augmentation { get; init; } = ImageAugmentation.Cifar;

    /// <summary>
    /// Per-channel mean and standard deviation the network's inputs are normalised with, in training and in scoring:
    /// the model's, recorded with it. Default CIFAR-10's (the reference code's constants).
    /// </summary>
    public Normalization Normalization { get; init; } = Normalization.Cifar;

    /// <summary>The learning rate actually used in one process (the linear-scaling rule on <see cref="BatchSize"/>; a
    /// distributed run scales by its global batch: <see cref="RunPlan.LearningRate"/>).</summary>
    public double EffectiveLearningRate => LearningRate ?? 0.1 * BatchSize / 128.0;

    /// <summary>
    /// Checks everything that can be checked without the data: each value, and the combinations (end-to-end needs K = 1,
    /// MAN needs K ≥ 2). The one place options are validated; <see cref="RunPlan"/> adds what needs the network.
    /// </summary>
    /// <exception cref="InvalidOptionException">A value or combination is invalid; the message names the option.</exception>
    public void Validate()
    {
        static void Check(bool ok, string option, string message)
        {
            if (!ok) throw new InvalidOptionException(option, message);
        }
        Check(K >= 1, nameof(K), $"K must be at least 1 (got {K}).");
        Check(Epochs >= 1, nameof(Epochs), $"Epochs must be at least 1 (got {Epochs}).");
        Check(BatchSize >= 2, nameof(BatchSize), $"The batch size must be at least 2 for batch norm (got {BatchSize}).");
        Check(ImageSize is null or >= 32, nameof(ImageSize), $"The image size must be at least 32 (got {ImageSize}).");
        Check(MaxImagePixels >= 1, nameof(MaxImagePixels), $"The image pixel limit must be at least 1 (got {MaxImagePixels}).");
        Check(DataWorkers >= 0 && DataWorkers <= MaxThreads, nameof(DataWorkers),
            $"Data workers must be 0 (automatic) to {MaxThreads} (got {DataWorkers}).");
        Check(EvaluationBatchSize >= 1, nameof(EvaluationBatchSize), $"The evaluation batch size must be positive (got {EvaluationBatchSize}).");
        Check(LearningRate is null || (LearningRate > 0 && double.IsFinite(LearningRate.Value)), nameof(LearningRate),
            FormattableString.Invariant($"The learning rate must be positive (got {LearningRate})."));
        Check(WeightDecay >= 0 && double.IsFinite(WeightDecay), nameof(WeightDecay),
            FormattableString.Invariant($"Weight decay must be ≥ 0 (got {WeightDecay})."));
        Check(Enum.IsDefined(Precision), nameof(Precision), $"Unknown precision {(int)Precision}.");
        Man?.Validate(nameof(Man));
        ValidatePipeline();
        Check(MicroBatches >= 1 && MicroBatches <= BatchSize / 2, nameof(MicroBatches),
            $"Micro-batches must be 1 to half the batch size ({BatchSize / 2}), so that each has 2 images for batch norm (got {MicroBatches}).");
        Check(Enum.IsDefined(Distributed), nameof(Distributed), $"Unknown distributed mode {(int)Distributed}.");
        Check(CollectiveTimeoutSeconds > 0 && double.IsFinite(CollectiveTimeoutSeconds), nameof(CollectiveTimeoutSeconds),
            FormattableString.Invariant($"The collective timeout must be a positive number of seconds (got {CollectiveTimeoutSeconds})."));
        Check(Distributed == DistributedMode.None || ResolvedPipelineStages == 1 || MicroBatches == 1, nameof(MicroBatches),
            "Pipelined stages on MPI ranks train whole batches; micro-batches belong to data-parallel runs (give --micro-batches 1).");
        CheckStructure(Rule != LearningRule.EndToEnd, Choices.Name(Rule), K, Man);
        Check(Architecture.Length > 0, nameof(Architecture), "The architecture is empty.");
        try { _ = Models.Architectures.Canonical(Architecture); }
        catch (ArgumentException e) { throw new InvalidOptionException(nameof(Architecture), e.Message); }
        Check(InitFrom is null || File.Exists(InitFrom), nameof(InitFrom), $"The weights file '{InitFrom}' to initialise from does not exist.");
        Check(Pretrained is null || InitFrom is null, nameof(Pretrained),
            "Give either pretrained weights by name or a weights file to initialise from, not both.");
        if (Pretrained is { } pretrained) _ = Interop.PretrainedWeights.Find(Architecture, pretrained, nameof(Pretrained));
        var device = Devices.Canonical(Device);
        // bf16 where the device cannot compute it natively is refused here, before any data is read.
        _ = Models.BFloat16Support.Resolve(Precision, device == "cpu" ? DeviceType.CPU : DeviceType.CUDA, nameof(Precision));
    }

    private void ValidatePipeline()
    {
        static void Check(bool ok, string option, string message)
        {
            if (!ok) throw new InvalidOptionException(option, message);
        }
        Check(PipelineStages >= 0 && PipelineStages <= K, nameof(PipelineStages),
            $"Pipeline stages must be 1 (sequential) to K = {K}, or 0 (auto) (got {PipelineStages}).");
        Check(PipelineDepth is >= 0 and <= MaxPipelineDepth, nameof(PipelineDepth),
            $"The pipeline depth must be 0 (lock-step) to {MaxPipelineDepth} (got {PipelineDepth}).");
        Check(StageThreads is null || (StageThreads >= 1 && StageThreads <= MaxThreads), nameof(StageThreads),
            $"Stage threads must be 1 to {MaxThreads} (got {StageThreads}).");
        if (StageDevices is { } devices)
        {
            Check(devices.Count >= 1, nameof(StageDevices), "The stage devices are empty.");
            foreach (var d in devices) Devices.Canonical(d, nameof(StageDevices));
            Check(PipelineStages == AutoPipelineStages || devices.Count == PipelineStages, nameof(StageDevices),
                $"{devices.Count} stage devices were given for {PipelineStages} pipeline stages; give one per stage.");
            Check(devices.Count <= K, nameof(StageDevices), $"{devices.Count} stage devices were given, but K = {K} segments make at most {K} stages.");
        }
        if (StageEnds is { } ends)
        {
            int w = ResolvedPipelineStages;
            Check(ends.Count == w - 1, nameof(StageEnds),
                $"{w} stages need {w - 1} stage end{(w == 2 ? "" : "s")} (the last segment of every stage but the last; got {ends.Count}).");
            for (int i = 0; i < ends.Count; i++)
                Check(ends[i] >= (i == 0 ? 0 : ends[i - 1] + 1) && ends[i] <= K - 2, nameof(StageEnds),
                    $"Stage ends must increase and lie in 0..{K - 2} (segments are 0..{K - 1}; got {string.Join(",", ends)}).");
        }
    }

    /// <summary>W as this run will use it: <see cref="PipelineStages"/>, or for auto one stage per stage device when given,
    /// else one per core, at most K.</summary>
    public int ResolvedPipelineStages => PipelineStages != AutoPipelineStages ? PipelineStages
        : StageDevices?.Count ?? Math.Max(1, Math.Min(K, Environment.ProcessorCount));

    /// <summary>
    /// How a rule, K and MAN go together, for options and for an engine built by hand alike: a rule that is not local
    /// trains one segment, and MAN needs a next segment to copy.
    /// </summary>
    internal static void CheckStructure(bool ruleIsLocal, string ruleName, int k, MomentumOptions? man)
    {
        if (!ruleIsLocal && k != 1)
            throw new InvalidOptionException(nameof(K), $"Rule '{ruleName}' is end-to-end backprop and needs K = 1 (got K = {k}).");
        if (man is not null && k < 2)
            throw new InvalidOptionException(nameof(Man), "MAN needs K ≥ 2: with one segment there is no next segment to copy.");
    }
}
