// The options that describe what is trained (data set kind, architecture, split, rule and its heads, MAN,
// optimisation), shared by every command that builds a training configuration. A --preset supplies a whole recipe;
// any option given beside it overrides that part of it.
using System.CommandLine;
using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Training;

namespace Man.ML.Samples.Cli;

internal sealed class ModelOptions
{
    // Every default is the library's (TrainingOptions), read from one instance rather than written again here.
    private static readonly TrainingOptions Defaults = new();
    private static readonly MomentumOptions DefaultMan = Defaults.Man ?? new MomentumOptions();

    public Option<string?> Preset { get; } = new("--preset")
    {
        Description = "A paper experiment by name ('manml presets' lists them); other options override parts of it.",
    };
    public Option<string> Dataset { get; } = new("--dataset")
    {
        Description = "Data format and recipe: cifar10, svhn, stl10 or imagenet (default cifar10; imagenet for ImageNet architectures).",
        DefaultValueFactory = _ => Defaults.Dataset.Name,
    };
    public Option<string> Arch { get; } = CommonOptions.Arch();
    public Option<string?> Split { get; } = new("--split")
    {
        Description = "Split table: man, manpp, infopro, dgl, or balanced " +
                      "(default: the architecture's reference table at this K when there is one, else balanced).",
    };
    public Option<int?> ImageSize { get; } = new("--image-size")
    {
        Description = "Network input side for ImageNet-layout data and synthetic measurements (default: the data set's, 224 for ImageNet).",
    };
    public Option<int> Workers { get; } = new("--workers")
    {
        Description = $"Background threads decoding image files, 0 to {TrainingOptions.MaxThreads} (default 0: half the cores).",
        DefaultValueFactory = _ => Defaults.DataWorkers,
    };
    public Option<long> MaxImagePixels { get; } = CommonOptions.MaxImagePixels();
    public Option<int> K { get; } = CommonOptions.K();
    public Option<string> Rule { get; } = CommonOptions.Rule();
    public Option<bool> Man { get; } = new("--man")
    {
        Description = "Add Momentum Auxiliary Networks (on by default only when neither --rule nor --k is given).",
    };
    public Option<bool> NoMan { get; } = new("--no-man") { Description = "Train without MAN (for example to override a preset)." };
    public Option<string?> ManAblation { get; } = new("--man-ablation")
    {
        Description = "MAN ablation: ema-only, lb-only or param-copy (a live copy of the next unit, no LB).",
    };
    public Option<string> ManInit { get; } = new("--man-init")
    {
        Description = "Initialisation of MAN's copies: random (reference code) or next (copy of the next unit).",
        DefaultValueFactory = _ => Choices.Name(DefaultMan.Initialization),
    };
    public Option<double> EmaMomentum { get; } = new("--ema-momentum")
    {
        Description = "EMA momentum m of MAN's EMA copy.", DefaultValueFactory = _ => DefaultMan.EmaDecay,
    };
    public Option<string> ManMix { get; } = new("--man-mix")
    {
        Description = "How MAN combines its copies: sum (LB + EMA) or learnable (MAN++: s·LB + (2 − s)·EMA).",
        DefaultValueFactory = _ => Choices.Name(DefaultMan.Mix),
    };
    public Option<string> DglHead { get; } = new("--dgl-head")
    {
        Description = "DGL's auxiliary head: mlp-sr (default) or manpp (MAN++'s).", DefaultValueFactory = _ => Choices.Name(Defaults.RuleSettings.DglHead),
    };
    public Option<string?> AuxConfig { get; } = new("--aux-config")
    {
        Description = "InfoPro's classifier: 0c1f, 0c2f, 1c1f, 1c2f, 1c3f or 2c2f (default 1c2f, with MAN 2c2f).",
    };
    public Option<string?> InfoProLoss { get; } = new("--infopro-loss")
    {
        Description = "InfoPro's classifier loss: ce or contrast (default contrast, with MAN ce).",
    };
    public Option<string?> Lambda { get; } = new("--lambda")
    {
        Description = "InfoPro's λ as ixx1,ixy1,ixx2,ixy2 (default InfoPro's table; with MAN 5,0.5,0,0).",
    };
    public Option<string?> LambdaSchedule { get; } = new("--lambda-schedule")
    {
        Description = "How λ varies: module (InfoPro) or stage (MAN's code); default module, with MAN stage.",
    };
    public Option<int> Epochs { get; } = new("--epochs") { Description = "Epochs.", DefaultValueFactory = _ => Defaults.Epochs };
    public Option<int> BatchSize { get; } = CommonOptions.BatchSize();
    public Option<double?> Lr { get; } = new("--lr") { Description = "Initial learning rate (default 0.1·B/128)." };
    public Option<double> WeightDecay { get; } = new("--weight-decay") { Description = "Weight decay.", DefaultValueFactory = _ => Defaults.WeightDecay };
    public Option<string?> InitFrom { get; } = CommonOptions.InitFrom();
    public Option<string?> Pretrained { get; } = CommonOptions.Pretrained();
    public Option<string?> PretrainedCache { get; } = CommonOptions.PretrainedCache();
    public Option<int> Seed { get; } = CommonOptions.Seed();
    public Option<int?> Threads { get; } = CommonOptions.Threads();
    public Option<string> Device { get; } = CommonOptions.Device();
    public Option<string?> ConvWorkaround { get; } = new("--conv-workaround")
    {
        Description = "How convolutions avoid libtorch's known CPU faults: auto (default: where this CPU needs it), always, or never (plain libtorch). " +
                      "Default: the MANML_CONV_WORKAROUND environment variable, else auto.",
    };
    public Option<string> Precision { get; } = CommonOptions.Precision();
    public Option<string?> Pipeline { get; } = new("--pipeline")
    {
        Description = "Train the segments as a pipeline of W stages, each on its own thread (and device): W from 2 to K, 1 " +
                      "(sequential, the default) or auto (one stage per --stage-devices entry, else per core).",
    };
    public Option<int> PipelineDepth { get; } = new("--pipeline-depth")
    {
        Description = $"d: how many steps MAN's EMA copy at a stage boundary may lag the sequential step's (0 = lock-step, " +
                      $"exactly the sequential run; up to {TrainingOptions.MaxPipelineDepth}).",
        DefaultValueFactory = _ => Defaults.PipelineDepth,
    };
    public Option<string?> StageDevices { get; } = new("--stage-devices")
    {
        Description = "Each pipeline stage's device, comma-separated (cpu,cpu or cuda:0,cuda:1; default: every stage on --device).",
    };
    public Option<int?> StageThreads { get; } = new("--stage-threads")
    {
        Description = "libtorch threads of each pipeline stage (default: the cores shared out, at least 1).",
    };
    public Option<string?> StageEnds { get; } = new("--stage-ends")
    {
        Description = "Last segment of every pipeline stage but the last, comma-separated (default: balanced by estimated cost).",
    };

    public Option<string> Distributed { get; } = new("--distributed")
    {
        Description = "none (default), or mpi: data-parallel over the ranks of an MPI job started by mpirun or srun (each rank runs the same " +
                      "command; --batch-size is each rank's share of the global batch); with --pipeline W, the W ranks of the job are the " +
                      "pipeline's stages instead (mpirun -np W).",
        DefaultValueFactory = _ => Choices.Name(Defaults.Distributed),
    };
    public Option<int> MicroBatches { get; } = new("--micro-batches")
    {
        Description = "Run each batch (each rank's shard) as m micro-batches with their gradients summed: batch norm sees each alone, as m " +
                      "data-parallel ranks would (default 1).",
        DefaultValueFactory = _ => Defaults.MicroBatches,
    };
    public Option<double> CollectiveTimeout { get; } = new("--collective-timeout")
    {
        Description = "Seconds a rank of a distributed run waits for the others before ending the job with a message (default " +
                      $"{TrainingOptions.DefaultCollectiveTimeoutSeconds}).",
        DefaultValueFactory = _ => Defaults.CollectiveTimeoutSeconds,
    };

    public IEnumerable<Option> All => new Option[]
    {
        Preset, Dataset, Arch, K, Split, ImageSize, Workers, MaxImagePixels, Rule, Man, NoMan, ManAblation, ManInit, EmaMomentum, ManMix, DglHead,
        AuxConfig, InfoProLoss, Lambda, LambdaSchedule, Epochs, BatchSize, Lr, WeightDecay, InitFrom, Pretrained, PretrainedCache, Seed, Threads, Device,
        ConvWorkaround,
        Precision, Pipeline, PipelineDepth, StageDevices, StageThreads, StageEnds, Distributed, MicroBatches, CollectiveTimeout,
    };

    private static int ParsePipeline(string text) =>
        text.Trim().Equals("auto", StringComparison.OrdinalIgnoreCase) ? TrainingOptions.AutoPipelineStages
        : int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int w) && w >= 1 ? w
        : throw new CliException($"--pipeline must be a number of stages (1 for sequential) or auto (got '{text}').");

    private static int[] ParseEnds(string text) => text.Split(',').Select(e =>
        int.TryParse(e.Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int v) ? v
        : throw new CliException($"--stage-ends must be segment indices separated by commas (got '{text}').")).ToArray();

    private static bool Given(ParseResult parse, Option option) => parse.GetResult(option) is { Implicit: false };

    /// <summary>
    /// Builds training options. Without a preset the default configuration is DGL + MAN at K = 16: MAN is on when --man
    /// is given, or when neither --rule nor --k is (naming a rule or a K without --man means that rule without MAN).
    /// Every named choice is parsed by its one name table (<see cref="Choices"/>), ignoring case.
    /// </summary>
    public TrainingOptions ToTrainingOptions(ParseResult parse)
    {
        if (Given(parse, Workers) && parse.GetValue(Workers) is var w && (w < 0 || w > TrainingOptions.MaxThreads))
            throw new CliException($"--workers must be 0 (half the cores) to {TrainingOptions.MaxThreads} (4 per core, at least 64; got {w}).");
        var preset = parse.GetValue(Preset) is { } name ? ExperimentPresets.Get(name) : null;
        var baseline = preset?.Options ?? Defaults with { Man = null };
        T Pick<T>(Option<T> option, T fallback) => Given(parse, option) ? parse.GetValue(option)! : fallback;
        T Choice<T>(Option<string?> option, T fallback) where T : struct, Enum =>
            Given(parse, option) ? Choices.Parse<T>(parse.GetValue(option)!, option.Name) : fallback;
        T ChoiceOf<T>(Option<string> option, T fallback) where T : struct, Enum =>
            Given(parse, option) ? Choices.Parse<T>(parse.GetValue(option)!, option.Name) : fallback;

        string archName;
        try { archName = Models.Architectures.Canonical(Pick(Arch, baseline.Architecture)); }
        catch (ArgumentException e) { throw new InvalidOptionException(Arch.Name, $"{Arch.Name}: {e.Message}"); }
        var dataset = Given(parse, Dataset) ? DatasetKind.Get(parse.GetValue(Dataset)!)
            : preset is not null ? baseline.Dataset
            : Models.Architectures.FamilyOf(archName) == Models.NetworkFamily.ImageNet ? DatasetKind.ImageNet : baseline.Dataset;
        if (parse.GetValue(Man) && parse.GetValue(NoMan)) throw new CliException("Give --man or --no-man, not both.");
        bool man = parse.GetValue(Man) || (!parse.GetValue(NoMan) && (preset is not null ? baseline.Man is not null : !Given(parse, Rule) && !Given(parse, K)));
        bool manTuned = Given(parse, ManAblation) || Given(parse, ManInit) || Given(parse, EmaMomentum) || Given(parse, ManMix);
        if (!man && manTuned) throw new CliException("--man-ablation, --man-init, --ema-momentum and --man-mix need MAN (--man).");

        MomentumOptions? momentum = null;
        if (man)
        {
            var start = baseline.Man ?? DefaultMan;
            momentum = start with
            {
                Ablation = Choice(ManAblation, start.Ablation),
                Initialization = ChoiceOf(ManInit, start.Initialization),
                EmaDecay = Pick(EmaMomentum, start.EmaDecay),
                Mix = ChoiceOf(ManMix, start.Mix),
            };
        }

        var rules = baseline.RuleSettings with { DglHead = ChoiceOf(DglHead, baseline.RuleSettings.DglHead) };
        var infoPro = rules.InfoPro with
        {
            Classifier = Given(parse, AuxConfig) ? Choices.Parse<AuxClassifierConfig>(parse.GetValue(AuxConfig)!, AuxConfig.Name) : rules.InfoPro.Classifier,
            LossMode = Given(parse, InfoProLoss) ? Choices.Parse<InfoProLossMode>(parse.GetValue(InfoProLoss)!, InfoProLoss.Name) : rules.InfoPro.LossMode,
            Lambdas = Given(parse, Lambda) ? InfoProLambdas.Parse(parse.GetValue(Lambda)!) : rules.InfoPro.Lambdas,
            Schedule = Given(parse, LambdaSchedule)
                ? Choices.Parse<LambdaSchedule>(parse.GetValue(LambdaSchedule)!, LambdaSchedule.Name) : rules.InfoPro.Schedule,
        };
        rules = rules with { InfoPro = infoPro };

        return new TrainingOptions
        {
            Dataset = dataset,
            Architecture = archName,
            SplitTable = Given(parse, Split) ? Choices.Parse<SplitTable>(parse.GetValue(Split)!, Split.Name) : baseline.SplitTable,
            ImageSize = Given(parse, ImageSize) ? parse.GetValue(ImageSize) : baseline.ImageSize,
            DataWorkers = Pick(Workers, baseline.DataWorkers),
            MaxImagePixels = Pick(MaxImagePixels, baseline.MaxImagePixels),
            K = Pick(K, baseline.K),
            Rule = ChoiceOf(Rule, baseline.Rule),
            RuleSettings = rules,
            Man = momentum,
            Epochs = Pick(Epochs, baseline.Epochs),
            BatchSize = Pick(BatchSize, baseline.BatchSize),
            // A preset's rate follows an overridden batch size by the linear-scaling rule unless --lr is given.
            LearningRate = Given(parse, Lr) ? parse.GetValue(Lr)
                : preset is not null && Given(parse, BatchSize) && baseline.LearningRate is { } presetRate
                    ? presetRate * parse.GetValue(BatchSize) / baseline.BatchSize
                    : baseline.LearningRate,
            WeightDecay = Pick(WeightDecay, baseline.WeightDecay),
            Seed = Pick(Seed, baseline.Seed),
            InitFrom = Given(parse, InitFrom) ? parse.GetValue(InitFrom) : baseline.InitFrom,
            Pretrained = Given(parse, Pretrained) ? parse.GetValue(Pretrained) : baseline.Pretrained,
            PretrainedCache = Given(parse, PretrainedCache) ? parse.GetValue(PretrainedCache) : baseline.PretrainedCache,
            ConvolutionWorkaround = Given(parse, ConvWorkaround)
                ? Choices.Parse<Models.ConvolutionWorkaround>(parse.GetValue(ConvWorkaround)!, ConvWorkaround.Name)
                : baseline.ConvolutionWorkaround,
            Device = Pick(Device, baseline.Device),
            Precision = ChoiceOf(Precision, baseline.Precision),
            PipelineStages = Given(parse, Pipeline) ? ParsePipeline(parse.GetValue(Pipeline)!) : baseline.PipelineStages,
            PipelineDepth = Pick(PipelineDepth, baseline.PipelineDepth),
            StageDevices = Given(parse, StageDevices) ? parse.GetValue(StageDevices)!.Split(',').Select(d => d.Trim()).ToArray() : baseline.StageDevices,
            StageThreads = Given(parse, StageThreads) ? parse.GetValue(StageThreads) : baseline.StageThreads,
            StageEnds = Given(parse, StageEnds) ? ParseEnds(parse.GetValue(StageEnds)!) : baseline.StageEnds,
            Distributed = ChoiceOf(Distributed, baseline.Distributed),
            MicroBatches = Pick(MicroBatches, baseline.MicroBatches),
            CollectiveTimeoutSeconds = Pick(CollectiveTimeout, baseline.CollectiveTimeoutSeconds),
            Augmentation = dataset.Augmentation,
            // Pretrained weights were trained on their own normalisation (ImageNet's for torchvision's).
            Normalization = Given(parse, Pretrained)
                ? global::Man.ML.Interop.PretrainedWeights.Find(archName, parse.GetValue(Pretrained)!, Pretrained.Name).Normalization
                : dataset.Normalization,
        };
    }

    /// <summary>Settings of this process rather than of the run: libtorch's threads (the convolution workaround is the
    /// run's, <see cref="TrainingOptions.ConvolutionWorkaround"/>).</summary>
    public void ApplyProcessSettings(ParseResult parse)
    {
        var threads = parse.GetValue(Threads);
        if (threads is { } t && (t < 1 || t > TrainingOptions.MaxThreads))
            throw new CliException($"--threads must be 1 to {TrainingOptions.MaxThreads} (4 per core, at least 64; got {t}).");
        TorchSharp.torch.set_num_threads(threads ?? Environment.ProcessorCount);
        if (!Given(parse, ConvWorkaround)) _ = Models.ConvolutionRouting.DefaultWorkaround; // a bad MANML_CONV_WORKAROUND is reported now, as a user mistake
    }
}

/// <summary>A user mistake: printed as one line, exit code 2.</summary>
internal sealed class CliException(string message) : Exception(message);
