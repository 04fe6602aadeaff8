// The paper's runs by name: one preset per cell of Table 1 (CIFAR-10, SVHN, STL-10 × ResNet-32 K = 8/16 and ResNet-110
// K = 32/55 × PredSim, DGL, InfoPro, each with and without MAN) and per row of the ablation Tables 4(a) and 5(a), with
// the paper's recipe (400 epochs; batch 1024 and lr 0.8 for CIFAR-10 and SVHN, batch 128 and lr 0.1 for STL-10; SGD
// Nesterov 0.9, weight decay 1e-4; MAN momentum 0.995).
using Man.ML.Data;
using Man.ML.Local;

namespace Man.ML.Training;

/// <summary>A named experiment of the paper.</summary>
/// <param name="Name">Name, for example <c>cifar10-resnet32-k16-dgl-man</c>.</param>
/// <param name="Description">One line saying what it is.</param>
/// <param name="Options">The recipe.</param>
public sealed record ExperimentPreset(string Name, string Description, TrainingOptions Options);

/// <summary>All presets.</summary>
public static class ExperimentPresets
{
    private static readonly Lazy<IReadOnlyList<ExperimentPreset>> Presets = new(Build);

    /// <summary>Every preset, Table 1 first, then the ablations.</summary>
    public static IReadOnlyList<ExperimentPreset> All => Presets.Value;

    /// <summary>The preset called <paramref name="name"/>.</summary>
    /// <exception cref="InvalidOptionException">No preset has that name.</exception>
    public static ExperimentPreset Get(string name) =>
        All.FirstOrDefault(p => p.Name == name.Trim().ToLowerInvariant())
        ?? throw new InvalidOptionException("preset", $"Unknown preset '{name}'; 'manml presets' lists the {All.Count} presets.");

    private static IReadOnlyList<ExperimentPreset> Build()
    {
        var presets = new List<ExperimentPreset>();
        var cells = new[] { ("resnet32", 32, 8), ("resnet32", 32, 16), ("resnet110", 110, 32), ("resnet110", 110, 55) };
        foreach (var dataset in new[] { DatasetKind.Cifar10, DatasetKind.Svhn, DatasetKind.Stl10 }) // Table 1's data sets
            foreach (var (arch, depth, k) in cells)
                foreach (var rule in new[] { LearningRule.PredSim, LearningRule.Dgl, LearningRule.InfoPro })
                    foreach (bool man in new[] { false, true })
                    {
                        var settings = new RuleSettings();
                        string note = "";
                        if (rule == LearningRule.InfoPro && !man)
                        {
                            var (lambdas, source) = InfoProLambdaTable.ForPreset(dataset.Name, depth, k);
                            settings = settings with { InfoPro = new InfoProSettings { Lambdas = lambdas } };
                            note = $"; λ {lambdas} ({source})";
                        }
                        var name = $"{dataset.Name}-{arch}-k{k}-{Choices.Name(rule)}{(man ? "-man" : "")}";
                        presets.Add(new ExperimentPreset(name,
                            $"Table 1: {Display(dataset.Name)}, {Display(arch)} K={k}, {Display(Choices.Name(rule))}{(man ? " + MAN" : "")}{note}",
                            Recipe(dataset) with
                            {
                                Architecture = arch, K = k, Rule = rule, RuleSettings = settings,
                                Man = man ? new MomentumOptions() : null,
                            }));
                    }

        var dgl = Recipe(DatasetKind.Cifar10) with { Architecture = "resnet32", K = 16, Rule = LearningRule.Dgl };
        presets.Add(new("table4a-dgl", "Table 4(a): CIFAR-10, ResNet-32 K=16, DGL without MAN (no EMA, no learnable bias)", dgl with { Man = null }));
        presets.Add(new("table4a-ema", "Table 4(a): CIFAR-10, ResNet-32 K=16, DGL + MAN's EMA copy only (no learnable bias)",
            dgl with { Man = new MomentumOptions { Ablation = ManAblation.EmaOnly } }));
        presets.Add(new("table4a-ema-lb", "Table 4(a): CIFAR-10, ResNet-32 K=16, DGL + full MAN (EMA copy and learnable bias)",
            dgl with { Man = new MomentumOptions() }));
        presets.Add(new("table5a-dgl", "Table 5(a): CIFAR-10, ResNet-32 K=16, DGL without the next unit's parameters", dgl with { Man = null }));
        presets.Add(new("table5a-parameter", "Table 5(a): CIFAR-10, ResNet-32 K=16, DGL + a live copy of the next unit's parameters (no EMA)",
            dgl with { Man = new MomentumOptions { Ablation = ManAblation.ParameterCopy } }));
        presets.Add(new("table5a-parameter-ema", "Table 5(a): CIFAR-10, ResNet-32 K=16, DGL + an EMA of the next unit's parameters",
            dgl with { Man = new MomentumOptions { Ablation = ManAblation.EmaOnly } }));
        return presets;
    }

    /// <summary>The paper's recipe for a data set (docs/METHOD.md §4).</summary>
    public static TrainingOptions Recipe(DatasetKind dataset)
    {
        bool stl = dataset.Name == DatasetKind.Stl10.Name;
        return new TrainingOptions
        {
            Dataset = dataset,
            Epochs = 400,
            BatchSize = stl ? 128 : 1024,
            LearningRate = stl ? 0.1 : 0.8,
            WeightDecay = 1e-4,
            Augmentation = dataset.Augmentation,
            Normalization = dataset.Normalization,
        };
    }

    private static string Display(string name) => name switch
    {
        "cifar10" => "CIFAR-10", "svhn" => "SVHN", "stl10" => "STL-10", "resnet32" => "ResNet-32", "resnet110" => "ResNet-110",
        "dgl" => "DGL", "infopro" => "InfoPro", "predsim" => "PredSim", _ => name,
    };
}
