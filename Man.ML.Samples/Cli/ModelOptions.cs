// The options that describe what is trained (architecture, split, rule, MAN, optimisation), shared by every command
// that builds a training configuration.
using System.CommandLine;
using Man.ML.Local;
using Man.ML.Training;

namespace Man.ML.Samples.Cli;

internal sealed class ModelOptions
{
    public Option<string> Arch { get; } = new("--arch") { Description = "Architecture: resnet32, resnet110 or resnet<6n+2>.", DefaultValueFactory = _ => "resnet32" };
    public Option<int> K { get; } = new("--k") { Description = "Number of gradient-isolated segments (1 = end-to-end).", DefaultValueFactory = _ => 16 };
    public Option<string> Rule { get; } = new("--rule") { Description = "Learning rule: e2e or dgl.", DefaultValueFactory = _ => "dgl" };
    public Option<bool> Man { get; } = new("--man") { Description = "Add Momentum Auxiliary Networks (on by default only when neither --rule nor --k is given)." };
    public Option<string?> ManAblation { get; } = new("--man-ablation") { Description = "MAN ablation: ema-only, lb-only or param-copy." };
    public Option<string> ManInit { get; } = new("--man-init") { Description = "Initialisation of MAN's copies: random (reference code) or next (copy of the next unit).", DefaultValueFactory = _ => "random" };
    public Option<double> EmaMomentum { get; } = new("--ema-momentum") { Description = "EMA momentum m of MAN's EMA copy.", DefaultValueFactory = _ => MomentumOptions.DefaultMomentum };
    public Option<int> BatchSize { get; } = new("--batch-size") { Description = "Mini-batch size.", DefaultValueFactory = _ => 128 };
    public Option<double?> Lr { get; } = new("--lr") { Description = "Initial learning rate (default 0.1·B/128)." };
    public Option<double> WeightDecay { get; } = new("--weight-decay") { Description = "Weight decay.", DefaultValueFactory = _ => 1e-4 };
    public Option<int> Seed { get; } = new("--seed") { Description = "Random seed (initialisation, data order, augmentation).", DefaultValueFactory = _ => 0 };
    public Option<int?> Threads { get; } = new("--threads") { Description = "CPU threads for libtorch (default: all cores)." };
    public Option<string> Device { get; } = new("--device") { Description = "Device: cpu or cuda.", DefaultValueFactory = _ => "cpu" };

    public IEnumerable<Option> All => new Option[] { Arch, K, Rule, Man, ManAblation, ManInit, EmaMomentum, BatchSize, Lr, WeightDecay, Seed, Threads, Device };

    /// <summary>
    /// Builds training options. The default configuration is DGL + MAN at K = 16: MAN is on when --man is given, or
    /// when neither --rule nor --k is (so naming a rule or a K without --man means that rule without MAN).
    /// </summary>
    public TrainingOptions ToTrainingOptions(ParseResult parse, int epochs)
    {
        bool manByDefault = IsImplicit(parse, Rule) && IsImplicit(parse, K);
        var ablation = parse.GetValue(ManAblation);
        bool man = parse.GetValue(Man) || manByDefault;
        if (!parse.GetValue(Man) && !manByDefault && (ablation is not null || !IsImplicit(parse, ManInit) || !IsImplicit(parse, EmaMomentum)))
            throw new CliException("--man-ablation, --man-init and --ema-momentum need --man.");
        MomentumOptions? momentum = null;
        if (man)
        {
            momentum = new MomentumOptions
            {
                Ablation = ablation?.ToLowerInvariant() switch
                {
                    null => Local.ManAblation.None,
                    "ema-only" => Local.ManAblation.EmaOnly,
                    "lb-only" => Local.ManAblation.LbOnly,
                    "param-copy" => Local.ManAblation.ParameterCopy,
                    _ => throw new CliException($"--man-ablation '{ablation}' is not one of ema-only, lb-only, param-copy."),
                },
                Initialization = parse.GetValue(ManInit)!.ToLowerInvariant() switch
                {
                    "random" => ManInitialization.Random,
                    "next" => ManInitialization.Next,
                    var other => throw new CliException($"--man-init '{other}' is not one of random, next."),
                },
                Momentum = parse.GetValue(EmaMomentum),
            };
        }
        return new TrainingOptions
        {
            Architecture = parse.GetValue(Arch)!,
            K = parse.GetValue(K),
            Rule = parse.GetValue(Rule)!,
            Man = momentum,
            Epochs = epochs,
            BatchSize = parse.GetValue(BatchSize),
            LearningRate = parse.GetValue(Lr),
            WeightDecay = parse.GetValue(WeightDecay),
            Seed = parse.GetValue(Seed),
            Device = parse.GetValue(Device)!,
        };
    }

    private static bool IsImplicit(ParseResult parse, Option option) => parse.GetResult(option) is null or { Implicit: true };

    public void ApplyThreads(ParseResult parse)
    {
        var threads = parse.GetValue(Threads);
        if (threads is < 1) throw new CliException($"--threads must be at least 1 (got {threads}).");
        TorchSharp.torch.set_num_threads(threads ?? Environment.ProcessorCount);
    }
}

/// <summary>A user mistake: printed as one line, exit code 2.</summary>
internal sealed class CliException(string message) : Exception(message);
