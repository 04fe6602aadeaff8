// The ML.NET estimator: streams the image and label columns of an IDataView (DataViewImages: memory bounded whatever
// the row count), trains any of the engine's networks by supervised local learning (DGL + MAN at K = 16 on a CIFAR
// ResNet-32 by default) through Man.ML's Trainer, and returns the transformer. Progress goes to MLContext.Log;
// cancellation is honoured between batches (Options.CancellationToken, or ML.NET's own cancellation of the MLContext:
// ML.NET 5 keeps CancelExecution internal, so it is read through MLNetInternals).
using Man.ML.Data;
using Man.ML.Interop;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace Man.ML.MLNet;

/// <summary>
/// Trains a MAN-enhanced ResNet image classifier. Create it with
/// <c>mlContext.MulticlassClassification.Trainers.ManImageClassification(options)</c>.
/// </summary>
public sealed class ManImageClassificationTrainer : IEstimator<ManImageClassificationTransformer>
{
    /// <summary>Options of <see cref="ManImageClassificationTrainer"/>; every default is documented.</summary>
    public sealed class Options
    {
        // The run's settings live in one TrainingOptions, so every default below is the library's own, defined once
        // there; MAN's settings are kept while UseMan is off, so switching it back on restores them.
        private static readonly TrainingOptions Defaults = new();
        private TrainingOptions training = Defaults;
        private MomentumOptions man = Defaults.Man ?? new MomentumOptions();
        private bool useMan = Defaults.Man is not null;

        /// <summary>
        /// Options of one of the paper's experiments (<c>manml presets</c> lists them; <see cref="ExperimentPresets"/>):
        /// architecture, data set, K, rule, MAN and its settings, split, rule settings, epochs, batch, learning rate, weight
        /// decay and seed as the preset has them; every other option at its default, to be set after.
        /// </summary>
        /// <exception cref="InvalidOptionException">No preset has that name.</exception>
        public static Options FromPreset(string name)
        {
            var preset = ExperimentPresets.Get(name).Options;
            return new Options
            {
                training = preset with { Man = null, Augmentation = Defaults.Augmentation, Normalization = Defaults.Normalization },
                man = preset.Man ?? new MomentumOptions(),
                useMan = preset.Man is not null,
                ImageSize = preset.ImageSize ?? preset.Dataset.ImageSize,
            };
        }

        /// <summary>
        /// Checks every option that needs neither the data nor the network: the run's (<see cref="TrainingOptions.Validate"/>)
        /// and the ML.NET face's own. What needs the network (K in range, a split table's entry, InfoPro's λ) is found when
        /// the run is resolved, by Fit or <see cref="ResolvePlan"/>.
        /// </summary>
        internal void Validate()
        {
            // Checked here first: the run's own check names it by the library's name, EvaluationBatchSize.
            if (ScoringBatchSize < 1)
                throw new InvalidOptionException(nameof(ScoringBatchSize), $"ScoringBatchSize must be at least 1 (got {ScoringBatchSize}).");
            ToTrainingOptions().Validate();
            if (ImageSize < 8) throw new InvalidOptionException(nameof(ImageSize), $"ImageSize must be at least 8 (got {ImageSize}).");
            if (Normalization is { } given && (given.Mean.Length != 3 || given.Std.Length != 3 ||
                given.Std.Any(v => !(v > 0)) || given.Mean.Any(v => !float.IsFinite(v))))
                throw new InvalidOptionException(nameof(Normalization),
                    "Normalization needs three finite means and three positive standard deviations (R, G, B).");
            if (!(ValidationSetFraction is >= 0 and < 1))
                throw new InvalidOptionException(nameof(ValidationSetFraction), $"ValidationSetFraction must lie in [0, 1) (got {ValidationSetFraction}).");
            if (ValidationSetFraction > 0 && ValidationSet is not null)
                throw new InvalidOptionException(nameof(ValidationSetFraction), "Give either ValidationSet or ValidationSetFraction, not both.");
            if (EarlyStopping is { } stopping)
            {
                stopping.Validate(nameof(EarlyStopping));
                if (ValidationSet is null && ValidationSetFraction == 0)
                    throw new InvalidOptionException(nameof(EarlyStopping),
                        "EarlyStopping watches validation data: give ValidationSet or ValidationSetFraction.");
            }
            if (ShuffleBufferSize is < 1)
                throw new InvalidOptionException(nameof(ShuffleBufferSize), $"ShuffleBufferSize must be at least 1 row (got {ShuffleBufferSize}).");
        }

        /// <summary>The run these options describe, as the library's options (normalisation and augmentation are set by Fit).</summary>
        internal TrainingOptions ToTrainingOptions() => training with { Man = useMan ? man : null };

        /// <summary>Label column: a key (MapValueToKey) or any type that can be mapped to one. Default "Label".</summary>
        public string LabelColumnName { get; set; } = "Label";

        /// <summary>
        /// Image column: an MLImage (LoadImages), encoded image bytes (LoadRawImageBytes), or a Single pixel vector of
        /// length 3·S·S from ExtractPixels with its default settings (planar RGB, 0–255). Default "Image".
        /// </summary>
        public string ImageColumnName { get; set; } = "Image";

        /// <summary>Side S of the square network input; images of another size are resized (bilinear). Default 32.</summary>
        public int ImageSize { get; set; } = 32;

        /// <summary>
        /// Architecture: a CIFAR ResNet (resnet32, resnet110, any resnet&lt;6n+2&gt; such as resnet8), an ImageNet ResNet or
        /// ResNeXt (resnet18/34/50/101/152, resnext50_32x4d, resnext101_32x8d) or vgg13_bn. Default "resnet32".
        /// </summary>
        public string Architecture { get => training.Architecture; set => training = training with { Architecture = value }; }

        /// <summary>The data set the run follows where the method's reference values depend on it (InfoPro's λ table:
        /// CIFAR-10, SVHN, STL-10, ImageNet); the images themselves come from the IDataView. Default CIFAR-10.</summary>
        public DatasetKind Dataset { get => training.Dataset; set => training = training with { Dataset = value }; }

        /// <summary>Number of gradient-isolated segments (1 = end-to-end). Default 16.</summary>
        public int K { get => training.K; set => training = training with { K = value }; }

        /// <summary>Learning rule (end-to-end needs K = 1). Default <see cref="LearningRule.Dgl"/>.</summary>
        public LearningRule Rule { get => training.Rule; set => training = training with { Rule = value }; }

        /// <summary>Whether to add Momentum Auxiliary Networks. Default true.</summary>
        public bool UseMan { get => useMan; set => useMan = value; }

        /// <summary>MAN ablation. Default none (full MAN).</summary>
        public ManAblation ManAblation { get => man.Ablation; set => man = man with { Ablation = value }; }

        /// <summary>Initialisation of MAN's copies. Default random (as the reference code).</summary>
        public ManInitialization ManInitialization { get => man.Initialization; set => man = man with { Initialization = value }; }

        /// <summary>EMA momentum of MAN. Default 0.995.</summary>
        public double EmaMomentum { get => man.EmaDecay; set => man = man with { EmaDecay = value }; }

        /// <summary>How MAN combines its two copies: <see cref="ManMix.Sum"/> (MAN) or <see cref="ManMix.Learnable"/> (MAN++,
        /// needs both copies). Default sum.</summary>
        public ManMix ManMix { get => man.Mix; set => man = man with { Mix = value }; }

        /// <summary>Segment boundaries from a reference split table (man, manpp, infopro, dgl) or balanced by cost; null
        /// takes the method's default for the rule and MAN (docs/METHOD.md), as the command line does. Default null.</summary>
        public SplitTable? SplitTable { get => training.SplitTable; set => training = training with { SplitTable = value }; }

        /// <summary>Settings of the rules: DGL's head kind, InfoPro's classifier, loss, λ and λ schedule (a null member takes
        /// the method's default for the run). Default: every default.</summary>
        public RuleSettings RuleSettings { get => training.RuleSettings; set => training = training with { RuleSettings = value }; }

        /// <summary>Epochs. Default <see cref="TrainingOptions.DefaultEpochs"/> (3), as the library and the samples.</summary>
        public int Epochs { get => training.Epochs; set => training = training with { Epochs = value }; }

        /// <summary>Mini-batch size. Default 128.</summary>
        public int BatchSize { get => training.BatchSize; set => training = training with { BatchSize = value }; }

        /// <summary>Initial learning rate; null means 0.1·BatchSize/128. Default null.</summary>
        public double? LearningRate { get => training.LearningRate; set => training = training with { LearningRate = value }; }

        /// <summary>Weight decay. Default 1e-4.</summary>
        public double WeightDecay { get => training.WeightDecay; set => training = training with { WeightDecay = value }; }

        /// <summary>Seed of initialisation, data order and augmentation. Default 0.</summary>
        public int Seed { get => training.Seed; set => training = training with { Seed = value }; }

        /// <summary>Device: "cpu" or "cuda". Default "cpu".</summary>
        public string Device { get => training.Device; set => training = training with { Device = value }; }

        /// <summary>
        /// The precision training computes in: <see cref="TrainingPrecision.Float32"/>, <see cref="TrainingPrecision.BFloat16"/>
        /// (mixed precision: bf16 convolutions, linear layers and activations, float32 master weights, optimizer state,
        /// batch-norm statistics and losses; needs a GPU or a CPU with AVX-512 BF16 or AMX, and Fit throws
        /// <see cref="InvalidOptionException"/> elsewhere), <see cref="TrainingPrecision.Auto"/> (bf16 where native, else
        /// float32) or <see cref="TrainingPrecision.BFloat16Emulated"/>. The model is float32 and scores in float32 whatever
        /// the training precision. Default <see cref="TrainingPrecision.Float32"/>.
        /// </summary>
        public TrainingPrecision Precision { get => training.Precision; set => training = training with { Precision = value }; }

        /// <summary>W, the pipeline's stages (<see cref="TrainingOptions.PipelineStages"/>): 1 trains the segments one after
        /// another (the default), W ≥ 2 as a pipeline of W stages on their own threads and devices,
        /// <see cref="TrainingOptions.AutoPipelineStages"/> chooses. Default 1.</summary>
        public int PipelineStages { get => training.PipelineStages; set => training = training with { PipelineStages = value }; }

        /// <summary>d, the pipeline's depth (<see cref="TrainingOptions.PipelineDepth"/>): 0 computes exactly the sequential
        /// run. Default 1.</summary>
        public int PipelineDepth { get => training.PipelineDepth; set => training = training with { PipelineDepth = value }; }

        /// <summary>Each pipeline stage's device; null: every stage on <see cref="Device"/>. Default null.</summary>
        public IReadOnlyList<string>? StageDevices { get => training.StageDevices; set => training = training with { StageDevices = value }; }

        /// <summary>libtorch threads of each pipeline stage; null: the cores shared out. Default null.</summary>
        public int? StageThreads { get => training.StageThreads; set => training = training with { StageThreads = value }; }

        /// <summary>Last segment of every pipeline stage but the last; null: balanced by estimated cost. Default null.</summary>
        public IReadOnlyList<int>? StageEnds { get => training.StageEnds; set => training = training with { StageEnds = value }; }

        /// <summary>
        /// Data-parallel training over the ranks of an MPI job (<see cref="TrainingOptions.Distributed"/>; docs/DISTRIBUTED.md):
        /// every rank runs the same pipeline on the same data, <see cref="BatchSize"/> is each rank's share of the global
        /// batch, and every rank's <c>Fit</c> returns the same model; save it on rank 0 (<see cref="global::Man.ML.Distributed.MpiJob.Rank"/>).
        /// Default <see cref="global::Man.ML.Distributed.DistributedMode.None"/>.
        /// </summary>
        public global::Man.ML.Distributed.DistributedMode Distributed { get => training.Distributed; set => training = training with { Distributed = value }; }

        /// <summary>Micro-batches each batch runs as (<see cref="TrainingOptions.MicroBatches"/>). Default 1.</summary>
        public int MicroBatches { get => training.MicroBatches; set => training = training with { MicroBatches = value }; }

        /// <summary>Longest wait of a rank for the others (<see cref="TrainingOptions.CollectiveTimeoutSeconds"/>). Default
        /// <see cref="TrainingOptions.DefaultCollectiveTimeoutSeconds"/>.</summary>
        public double CollectiveTimeoutSeconds
        {
            get => training.CollectiveTimeoutSeconds;
            set => training = training with { CollectiveTimeoutSeconds = value };
        }

        /// <summary>
        /// A PyTorch state dict (torch.save or safetensors, torchvision's names) to start the backbone from: fine-tuning a
        /// pretrained network. A final classifier of another class count is replaced by a fresh one (PyTorch's nn.Linear
        /// initialisation under <see cref="Seed"/>). Default null: a fresh initialisation.
        /// </summary>
        public string? InitFrom { get => training.InitFrom; set => training = training with { InitFrom = value }; }

        /// <summary>
        /// Published pretrained weights to start the backbone from, by name, as ImageClassificationTrainer starts from its
        /// own: <c>imagenet</c> (torchvision's IMAGENET1K_V1 of <see cref="Architecture"/>), <c>IMAGENET1K_V2</c> where
        /// torchvision has it, or a name registered with <see cref="PretrainedWeights.Register"/>. Downloaded once (with
        /// progress in <c>MLContext.Log</c>) into <see cref="PretrainedCache"/>, verified against the published SHA-256
        /// before every use; the weights' own normalisation (ImageNet's) is used unless <see cref="Normalization"/> is
        /// given. Not with <see cref="InitFrom"/>. Default null.
        /// </summary>
        public string? Pretrained { get => training.Pretrained; set => training = training with { Pretrained = value }; }

        /// <summary>
        /// The cache folder of <see cref="Pretrained"/> weights (as ImageClassificationTrainer's workspace); null:
        /// <c>$MANML_PRETRAINED_CACHE</c>, else <c>~/.cache/manml/pretrained</c>. Default null.
        /// </summary>
        public string? PretrainedCache { get => training.PretrainedCache; set => training = training with { PretrainedCache = value }; }

        /// <summary>Training augmentation of the <see cref="ImageRecipe"/> (CIFAR: reflect-pad 4, random crop, flip; ImageNet:
        /// random-resized crop, flip); off, training images get the scoring crop. Default true.</summary>
        public bool Augment { get; set; } = true;

        /// <summary>
        /// How images of any size become the S×S input: <see cref="Data.ImageRecipe.Cifar"/> (the whole image resized) or
        /// <see cref="Data.ImageRecipe.ImageNet"/> (random-resized crops for training; shorter side to S·256/224 and centre
        /// crop for scoring); stored with the model. Default automatic: CIFAR's for CIFAR ResNets, ImageNet's otherwise.
        /// </summary>
        public ImageRecipe ImageRecipe { get; set; } = ImageRecipe.Automatic;

        /// <summary>
        /// Most decoded rows held at once. Every epoch reads the rows in an exact seeded permutation, gathered in chunks of
        /// this many rows, one sequential pass over the view per chunk (decoding only that chunk's images): memory is one
        /// chunk (rows · 3·S·S bytes) and a few batches whatever the row count; a larger chunk means fewer passes. Null
        /// takes as many rows as fit in <see cref="DefaultShuffleBufferBytes"/> at <see cref="ImageSize"/> (at least two
        /// batches). Default null.
        /// </summary>
        public int? ShuffleBufferSize { get; set; }

        /// <summary>
        /// Stop once the validation figure has stalled and return the best epoch's model (needs <see cref="ValidationSet"/>
        /// or <see cref="ValidationSetFraction"/>). Default none: every epoch is trained and the last returned.
        /// </summary>
        public EarlyStopping? EarlyStopping { get; set; }

        /// <summary>
        /// Per-channel mean and standard deviation (of pixel values in [0, 1], RGB) the network's inputs are normalised with,
        /// for training and scoring; stored with the model. Null measures them on the training rows (at most
        /// <see cref="NormalizationSampleSize"/>, evenly spaced, after resizing to <see cref="ImageSize"/>). Default null.
        /// </summary>
        public Normalization? Normalization { get; set; }

        /// <summary>
        /// Before training, check that the backend (libtorch on this CPU or GPU) computes every convolution of the
        /// configuration correctly against float64, once per process (a fraction of a second for CIFAR networks); Fit
        /// then throws <see cref="Backend.BackendFaultException"/> naming the layer, the shape and the remedy. Default true.
        /// </summary>
        public bool CheckBackend { get; set; } = true;

        /// <summary>
        /// A folder for TensorBoard event files: each epoch's losses, accuracies, learning rate and every segment's local
        /// loss are written there as it ends (<see cref="TensorBoardLog"/>). Default none.
        /// </summary>
        public string? TensorBoardDirectory { get; set; }

        /// <summary>
        /// Most pixels (width·height) an image may have; a larger one is an error naming the row, its size and the limit,
        /// raised before it is decoded where the column holds encoded bytes (LoadRawImageBytes). An MLImage column
        /// (LoadImages) is decoded by ML.NET before Man.ML sees it: check the files first where they may be hostile. The
        /// transformer Fit returns keeps the limit (<see cref="ManImageClassificationTransformer.MaxImagePixels"/>).
        /// Default <see cref="TrainingOptions.DefaultMaxImagePixels"/> (8192×8192).
        /// </summary>
        public long MaxImagePixels { get => training.MaxImagePixels; set => training = training with { MaxImagePixels = value }; }

        /// <summary>Images scored together by the transformer. Default 256.</summary>
        public int ScoringBatchSize { get => training.EvaluationBatchSize; set => training = training with { EvaluationBatchSize = value }; }

        /// <summary>Validation data in the same format as the training data, scored after every epoch. Default none.</summary>
        public IDataView? ValidationSet { get; set; }

        /// <summary>
        /// When <see cref="ValidationSet"/> is not given: the fraction of the training rows held out and scored after every
        /// epoch instead, chosen by a permutation seeded with <see cref="Seed"/> (not stratified), in [0, 1). Default 0
        /// (none held out; ML.NET's ImageClassificationTrainer holds out 0.1 by default, Man.ML trains on every row unless told).
        /// </summary>
        public double ValidationSetFraction { get; set; }

        /// <summary>Called after every epoch with its figures (accuracy, loss, learning rate, local losses, time). Default none.</summary>
        public Action<EpochMetrics>? MetricsCallback { get; set; }

        /// <summary>Called after every mini-batch. Default none.</summary>
        public Action<BatchProgress>? ProgressCallback { get; set; }

        /// <summary>Cancels training between batches (Fit then throws <see cref="OperationCanceledException"/>). Default none.</summary>
        public CancellationToken CancellationToken { get; set; }
    }

    private readonly IHostEnvironment environment;
    private readonly Options options;

    internal ManImageClassificationTrainer(IHostEnvironment environment, Options options)
    {
        this.environment = environment;
        this.options = options;
        // Only the options are checked here: what needs the network (K in range, a split table's entry, InfoPro's λ)
        // is resolved by Fit or ResolvePlan, so building a pipeline builds nothing, reads no file and leaves libtorch's
        // random generator alone.
        options.Validate();
    }

    /// <summary>Most training rows the normalisation is measured on when <see cref="Options.Normalization"/> is null.</summary>
    public const int NormalizationSampleSize = 10_000;

    /// <summary>Memory the decoded rows of one shuffle chunk may take when <see cref="Options.ShuffleBufferSize"/> is null: 64 MiB.</summary>
    public const long DefaultShuffleBufferBytes = 64L << 20;

    private ImageRecipe Recipe => ImageRecipes.Resolve(options.ImageRecipe, options.Architecture);

    private int BufferRows => options.ShuffleBufferSize
        ?? (int)Math.Max(2L * options.BatchSize, DefaultShuffleBufferBytes / (3L * options.ImageSize * options.ImageSize));

    private TrainingOptions ToTrainingOptions(Normalization? normalization = null) => options.ToTrainingOptions() with
    {
        Augmentation = ImageRecipes.BatchAugmentation(Recipe, options.Augment),
        Normalization = normalization ?? options.Normalization ?? Normalization.Cifar,
    };

    /// <summary>
    /// The run these options describe, resolved as Fit will resolve it for <paramref name="classes"/> classes: the canonical
    /// architecture, K and the segment boundaries, each segment's head and loss weights, MAN, the optimizer and the
    /// schedule (the same plan the command line prints and metrics.json records). Builds the network once to do so;
    /// libtorch's global generator is left as it was.
    /// </summary>
    /// <exception cref="InvalidOptionException">An option, or a combination, that the network rejects (K out of range, a
    /// split table without an entry for it, InfoPro without reference λ).</exception>
    public RunPlan ResolvePlan(int classes) => RunPlan.Resolve(ToTrainingOptions(), classes, options.ImageSize);

    /// <inheritdoc />
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        var image = inputSchema.FirstOrDefault(c => c.Name == options.ImageColumnName);
        if (image.Name is null) throw new ArgumentOutOfRangeException(nameof(inputSchema), $"Image column '{options.ImageColumnName}' was not found.");
        var label = inputSchema.FirstOrDefault(c => c.Name == options.LabelColumnName);
        if (label.Name is null) throw new ArgumentOutOfRangeException(nameof(inputSchema), $"Label column '{options.LabelColumnName}' was not found.");
        var columns = inputSchema.Where(c => c.Name is not ManImageClassificationTransformer.ScoreColumnName
                                             and not ManImageClassificationTransformer.PredictedLabelColumnName).ToList();
        columns.Add(MLNetInternals.Column(ManImageClassificationTransformer.ScoreColumnName, SchemaShape.Column.VectorKind.Vector,
            NumberDataViewType.Single, false));
        columns.Add(MLNetInternals.Column(ManImageClassificationTransformer.PredictedLabelColumnName, SchemaShape.Column.VectorKind.Scalar,
            NumberDataViewType.UInt32, true, label.Annotations));
        return new SchemaShape(columns);
    }

    /// <summary>Trains on <paramref name="input"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The label or image column is missing.</exception>
    /// <exception cref="ArgumentException">A column has a type Man.ML cannot read.</exception>
    /// <exception cref="InvalidDataException">A row holds a missing label or an image that cannot be decoded.</exception>
    /// <exception cref="OperationCanceledException">Training was cancelled.</exception>
    /// <exception cref="Backend.BackendFaultException">The backend computes a convolution of this configuration wrongly
    /// (see <see cref="Options.CheckBackend"/>).</exception>
    /// <exception cref="InvalidOptionException"><see cref="Options.BatchSize"/> is larger than the training rows.</exception>
    public ManImageClassificationTransformer Fit(IDataView input) => Fit(input, initialModel: null);

    /// <summary>
    /// Trains further from <paramref name="initialModel"/> (a transformer this trainer made, or one loaded with
    /// LoadManModel): its backbone weights and batch-norm statistics replace the seeded initialisation, and its
    /// normalisation is kept unless <see cref="Options.Normalization"/> is given; auxiliary heads and MAN's copies start
    /// afresh (copies made from the loaded next unit when <see cref="Options.ManInitialization"/> says so), and the
    /// learning-rate schedule starts again over <see cref="Options.Epochs"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The model's architecture, class count or class labels differ from these
    /// options and this data.</exception>
    public ManImageClassificationTransformer Fit(IDataView input, ManImageClassificationTransformer? initialModel)
    {
        var host = environment.Register(nameof(ManImageClassificationTrainer));
        using var channel = host.Start("Training");
        var token = options.CancellationToken;
        var train = DataViewImages.Scan(input, options.LabelColumnName, options.ImageColumnName, options.ImageSize, "training data", null, token,
            options.MaxImagePixels);
        DataViewImages? validation = null;
        if (options.ValidationSet is not null)
            validation = DataViewImages.Scan(options.ValidationSet, options.LabelColumnName, options.ImageColumnName, options.ImageSize,
                "validation set", train.ClassNames.Count, token, options.MaxImagePixels);
        else if (options.ValidationSetFraction > 0)
            (train, validation) = train.HoldOut(options.ValidationSetFraction, options.Seed);
        // Checked before the normalisation is measured and the network built: the trainer would refuse it only then.
        if (options.BatchSize > train.Count)
            throw new InvalidOptionException(nameof(Options.BatchSize),
                $"BatchSize {options.BatchSize} is larger than the {train.Count} training rows; give at most {train.Count}.");
        var recipe = Recipe;

        var pretrained = options.Pretrained is { } weights ? PretrainedWeights.Find(options.Architecture, weights, nameof(Options.Pretrained)) : null;
        if (pretrained is not null)
        {
            channel.Info(MessageSensitivity.None, $"Man.ML pretrained weights: {pretrained.Architecture} {pretrained.Name} from {pretrained.Url}, " +
                $"cached in {PretrainedWeights.CacheFolder(options.PretrainedCache)}.");
            Action<DownloadProgress> progress = p => channel.Info(MessageSensitivity.None,
                $"Man.ML downloading {pretrained.FileName}: {p.Received >> 20} MiB{(p.Total is { } t ? $" of {t >> 20} MiB" : "")}.");
            PretrainedWeights.Fetch(pretrained, options.PretrainedCache, progress, cancellation: token);
        }
        var normalization = options.Normalization ?? initialModel?.Normalization ?? pretrained?.Normalization
            ?? train.MeasureNormalization(NormalizationSampleSize, (w, h) => ImageRecipes.ScoringCrop(recipe, options.ImageSize, w, h), token);
        channel.Info(MessageSensitivity.None, FormattableString.Invariant(
            $"Man.ML normalisation{(options.Normalization is not null ? " as given" : initialModel is not null ? " of the initial model"
                : pretrained is not null ? " of the pretrained weights" : "")}") +
            (options.Normalization is null && initialModel is null && pretrained is null
                ? $" measured on {Math.Min(train.Count, NormalizationSampleSize)} training images"
                : "") +
            FormattableString.Invariant($": mean {string.Join(", ", normalization.Mean.Select(m => m.ToString("0.0000")))}, ") +
            FormattableString.Invariant($"std {string.Join(", ", normalization.Std.Select(m => m.ToString("0.0000")))}."));
        var trainingOptions = ToTrainingOptions(normalization);
        var trainer = new Trainer(trainingOptions) 
        {
            CheckBackend = options.CheckBackend, EarlyStopping = options.EarlyStopping, TensorBoardDirectory = options.TensorBoardDirectory,
        };
        var plan = trainer.Prepare(train.ClassNames.Count, options.ImageSize);
        if (plan.InitialWeights is { } loaded)
            channel.Info(MessageSensitivity.None, $"Man.ML initial weights: {loaded.Path} ({Choices.Name(loaded.Format)}, {loaded.TensorsLoaded} tensors)" +
                (loaded.HeadReplaced ? $"; its classifier has another class count and was replaced by a fresh {train.ClassNames.Count}-class one." : "."));
        if (initialModel is not null) Continue(trainer.PreparedNetwork!, plan, initialModel, train.ClassNames);
        int bufferRows = BufferRows;
        int passes = (train.Count + bufferRows - 1) / bufferRows;
        channel.Info(MessageSensitivity.None,
            $"Man.ML: {plan.Summary}, " +
            $"{train.Count} training images of {train.ClassNames.Count} classes{(validation is null ? "" : $", {validation.Count} validation images")}, " +
            $"{trainingOptions.Epochs} epochs, batch {trainingOptions.BatchSize}, lr {plan.LearningRate:0.####}, {Choices.Name(recipe)} recipe " +
            $"at {options.ImageSize}x{options.ImageSize}; " +
            $"rows read in a seeded permutation every epoch, {passes} {(passes == 1 ? "pass" : "passes")} of at most {bufferRows} decoded rows.");

        using var cancellation = CancellationTokenSource.CreateLinkedTokenSource(token);
        trainer.BatchCompleted += progress =>
        {
            options.ProgressCallback?.Invoke(progress);
            if (MLNetInternals.IsCanceled(host)) cancellation.Cancel();
        };
        trainer.EpochCompleted += metrics =>
        {
            channel.Info(MessageSensitivity.None,
                $"Man.ML epoch {metrics.Epoch}/{trainingOptions.Epochs}: train loss {metrics.TrainLoss:0.0000}, train accuracy {metrics.TrainAccuracy:P2}" +
                (metrics.ValAccuracy is { } v ? $", validation accuracy {v:P2}, validation loss {metrics.ValLoss:0.0000}" : "") +
                $", local losses {string.Join(" / ", metrics.SegmentLosses.Select(l => l.ToString("0.000")))}, " +
                $"lr {metrics.Lr:0.#####}, {metrics.Seconds:0.0} s.");
            options.MetricsCallback?.Invoke(metrics);
        };
        var (augmentation, normalized) = (trainingOptions.Augmentation, trainingOptions.Normalization);
        var result = trainer.Train(new DataViewSource(train, recipe, augmentation, normalized, options.Augment, bufferRows),
            validation is null ? null : new DataViewSource(validation, recipe, augmentation, normalized, false, bufferRows), null,
            cancellation.Token);
        if (trainer.BackendReport is { } backend)
            channel.Info(MessageSensitivity.None,
                $"Man.ML backend check: {backend.Convolutions.Count} convolution shapes correct against float64 in {backend.Seconds:0.00} s " +
                $"({backend.Environment.Cpu}; oneDNN {backend.Environment.OneDnnIsa}; convolution workaround {Choices.Name(backend.Environment.Workaround)}).");
        if (result.Final.BestEpoch is { } best)
            channel.Info(MessageSensitivity.None, result.Final.StoppedEarly
                ? $"Man.ML stopped early after epoch {result.Epochs.Count}: no improvement of the validation " +
                    $"{Choices.Name(options.EarlyStopping!.Metric)} for {options.EarlyStopping.Patience} epochs; returning epoch {best}'s weights."
                : $"Man.ML early stopping: returning epoch {best}'s weights, the best of the {result.Epochs.Count}.");
        channel.Info(MessageSensitivity.None,
            $"Man.ML trained in {result.Final.TrainSeconds:0.0} s ({result.Final.ImagesPerSecond:0.0} images/s); final validation accuracy " +
            $"{(result.Final.ValAccuracy is { } f ? f.ToString("P2") : "n/a")}.");
        return new ManImageClassificationTransformer(result.Network, train.KeyValues, trainingOptions.Normalization,
            options.ImageColumnName, options.ImageSize, options.ScoringBatchSize, options.Device,
            result.TrainedWith, recipe) { MaxImagePixels = options.MaxImagePixels };
    }

    // The initial model's weights and statistics into the freshly built network, after checking they describe the same thing.
    private static void Continue(Models.UnitChainNetwork target, RunPlan plan, ManImageClassificationTransformer initialModel, IReadOnlyList<string> classNames)
    {
        var source = initialModel.Network;
        if (!string.Equals(source.Architecture, plan.Architecture, StringComparison.OrdinalIgnoreCase))
            throw new ArgumentException($"The initial model is a {source.Architecture}; these options train a {plan.Architecture}.", nameof(initialModel));
        if (source.ClassCount != classNames.Count)
            throw new ArgumentException($"The initial model has {source.ClassCount} classes; the training data has {classNames.Count}.", nameof(initialModel));
        if (initialModel.KeyValues?.Names() is { } names && !names.SequenceEqual(classNames))
            throw new ArgumentException($"The initial model's classes ({string.Join(", ", names)}) " +
                $"are not the training data's ({string.Join(", ", classNames)}).",
                nameof(initialModel));
        var from = source.state_dict();
        using var noGrad = no_grad();
        foreach (var (name, tensor) in target.state_dict())
        {
            if (!from.TryGetValue(name, out var value))
                throw new ArgumentException($"The initial model has no tensor '{name}'.", nameof(initialModel));
            if (!value.shape.SequenceEqual(tensor.shape))
                throw new ArgumentException($"The initial model's '{name}' has shape [{string.Join(", ", value.shape)}]; " +
                    $"this network's has [{string.Join(", ", tensor.shape)}].",
                    nameof(initialModel));
            tensor.copy_(value);
        }
    }
}

/// <summary>Catalog extension: <c>mlContext.MulticlassClassification.Trainers.ManImageClassification(...)</c>.</summary>
public static class ManCatalog
{
    /// <summary>A trainer of MAN-enhanced ResNet image classifiers (supervised local learning with Momentum Auxiliary Networks).</summary>
    public static ManImageClassificationTrainer ManImageClassification(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog, ManImageClassificationTrainer.Options options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new ManImageClassificationTrainer(MLNetInternals.GetEnvironment(catalog), options);
    }

    /// <summary>A trainer with default options and the given columns.</summary>
    public static ManImageClassificationTrainer ManImageClassification(
        this MulticlassClassificationCatalog.MulticlassClassificationTrainers catalog,
        string labelColumnName = "Label", string imageColumnName = "Image", int epochs = TrainingOptions.DefaultEpochs) =>
        catalog.ManImageClassification(new ManImageClassificationTrainer.Options
        {
            LabelColumnName = labelColumnName, ImageColumnName = imageColumnName, Epochs = epochs,
        });
}
