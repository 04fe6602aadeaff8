// Everything that defines a training run, with the paper's defaults where the paper has one.
using Man.ML.Data;
using Man.ML.Local;

namespace Man.ML.Training;

/// <summary>Options of a local-learning training run.</summary>
public sealed record TrainingOptions
{
    /// <summary>Data set kind (cifar10, svhn, stl10): selects InfoPro's λ table entry. Default cifar10.</summary>
    public string Dataset { get; init; } = "cifar10";

    /// <summary>Architecture: resnet32, resnet110 or resnet&lt;6n+2&gt;. Default resnet32.</summary>
    public string Architecture { get; init; } = "resnet32";

    /// <summary>
    /// Reference split table (man, manpp, infopro, dgl) or balanced; null: the architecture's default table at this K
    /// when there is one, else the balancing rule.
    /// </summary>
    public string? SplitTable { get; init; }

    /// <summary>Side of the network input for image-file data (ImageNet layout); null: 224. Data held in memory keeps its own size.</summary>
    public int? ImageSize { get; init; }

    /// <summary>Background threads decoding image files; 0: half the cores (at least one).</summary>
    public int DataWorkers { get; init; }

    /// <summary>Number of gradient-isolated segments; 1 is end-to-end. Default 16 (every unit its own segment on ResNet-32).</summary>
    public int K { get; init; } = 16;

    /// <summary>Learning rule: e2e, dgl, infopro or predsim. Default dgl.</summary>
    public string Rule { get; init; } = DglRule.RuleName;

    /// <summary>Settings of the learning rules (DGL head, InfoPro classifier, loss and λ). Default: METHOD.md's defaults.</summary>
    public RuleSettings RuleSettings { get; init; } = new();

    /// <summary>MAN settings, or null for no MAN. Default: MAN with the reference settings.</summary>
    public MomentumOptions? Man { get; init; } = new();

    /// <summary>Epochs. Default 3 (a short CPU run; the paper trains 400).</summary>
    public int Epochs { get; init; } = 3;

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

    /// <summary>Batch size for evaluation. Default 256.</summary>
    public int EvaluationBatchSize { get; init; } = 256;

    /// <summary>Training augmentation. Default CIFAR's (reflect-pad 4, crop, flip, CIFAR normalisation).</summary>
    public ImageAugmentation Augmentation { get; init; } = ImageAugmentation.Cifar;

    /// <summary>The learning rate actually used.</summary>
    public double EffectiveLearningRate => LearningRate ?? 0.1 * BatchSize / 128.0;

    /// <summary>Checks values that do not depend on the data; throws <see cref="ArgumentException"/> naming the option.</summary>
    public void Validate()
    {
        if (K < 1) throw new ArgumentException($"K must be at least 1 (got {K}).", nameof(K));
        if (Epochs < 1) throw new ArgumentException($"Epochs must be at least 1 (got {Epochs}).", nameof(Epochs));
        if (BatchSize < 2) throw new ArgumentException($"The batch size must be at least 2 for batch norm (got {BatchSize}).", nameof(BatchSize));
        if (ImageSize is < 32) throw new ArgumentException($"The image size must be at least 32 (got {ImageSize}).", nameof(ImageSize));
        if (DataWorkers < 0) throw new ArgumentException($"Data workers must be 0 (automatic) or more (got {DataWorkers}).", nameof(DataWorkers));
        if (EvaluationBatchSize < 1) throw new ArgumentException("The evaluation batch size must be positive.", nameof(EvaluationBatchSize));
        if (LearningRate is { } lr && (lr <= 0 || double.IsNaN(lr) || double.IsInfinity(lr)))
            throw new ArgumentException($"The learning rate must be positive (got {lr}).", nameof(LearningRate));
        if (WeightDecay < 0 || double.IsNaN(WeightDecay)) throw new ArgumentException("Weight decay must be ≥ 0.", nameof(WeightDecay));
        if (Man is { Momentum: var m } && (m < 0 || m > 1 || double.IsNaN(m)))
            throw new ArgumentException($"The EMA momentum must lie in [0, 1] (got {m}).", nameof(Man));
    }
}
