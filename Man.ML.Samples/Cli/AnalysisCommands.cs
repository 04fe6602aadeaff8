// The paper's analyses on checkpoints written by manml train: per-unit linear separability (manml analyse probe, Figure 4),
// CKA against a reference model (manml analyse cka, Figure 5) and one unit's feature maps (manml analyse features, Figure 3).
using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Man.ML.Samples.Tooling;
using Man.ML.Data;
using Man.ML.Diagnostics;
using Man.ML.Models;
using Man.ML.Training;

namespace Man.ML.Samples.Cli;

internal static class AnalysisCommands
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private static (UnitChainNetwork Network, CheckpointInfo Info, string Name) LoadModel(string path)
    {
        var (network, info) = ModelCheckpoint.Load(path);
        ModelFiles.NoteUnverified(path, info.Verified);
        var name = Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(path))) ?? Path.GetFileNameWithoutExtension(path);
        return (network, info, name);
    }

    private static Normalization NormalizationOf(CheckpointInfo info) =>
        info.NormalizationMean.Length == 3 ? new Normalization(info.NormalizationMean, info.NormalizationStd) : Normalization.Cifar;

    private static LabeledImages ReadData(string[]? paths) =>
        CifarBinary.Read(paths is { Length: > 0 } ? paths : new[] { TrainCommand.BundledSample });

    private static Option<string[]> DataOption() =>
        new("--data") { Description = "CIFAR-10 binary files or folders (default: the bundled sample).", AllowMultipleArgumentsPerToken = true };

    public static Command Probe()
    {
        var models = new Option<string[]>("--model")
        {
            Description = "Checkpoints (model.ckpt) to probe; one line each in the plot.", Required = true, AllowMultipleArgumentsPerToken = true,
        };
        var data = DataOption();
        var trainImages = new Option<int>("--probe-train")
        {
            Description = "Images (from the start of --data) the probes train on.", DefaultValueFactory = _ => 2000,
        };
        var valImages = new Option<int>("--probe-val")
        {
            Description = "Images (from the end of --data) the probes are scored on.", DefaultValueFactory = _ => 1000,
        };
        var output = new Option<string>("--out") { Description = "Output folder.", Required = true };
        var command = new Command("probe", "Linear separability after every unit: a linear classifier on frozen, pooled features (Figure 4).")
        {
            models, data, trainImages, valImages, output,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            using var all = ReadData(parse.GetValue(data));
            int nTrain = parse.GetValue(trainImages), nVal = parse.GetValue(valImages);
            if (nTrain < 10 || nVal < 10 || nTrain + nVal > all.Count)
                throw new CliException($"--probe-train {nTrain} and --probe-val {nVal} must be at least 10 each and fit in the {all.Count} images of --data.");
            using var train = all.Slice(0, nTrain);
            using var val = all.Slice(all.Count - nVal, nVal);
            var outDir = parse.GetValue(output)!;
            return OutputFolders.Write(parse, outDir, output.Name, () =>
            {
                var results = new JsonArray();
                var series = new List<ChartSeries>();
                foreach (var path in parse.GetValue(models)!)
                {
                    var (network, info, name) = LoadModel(path);
                    using var _ = network;
                    var norm = NormalizationOf(info);
                    var trainFeatures = Representations.PooledFeatures(network, train, norm);
                    var valFeatures = Representations.PooledFeatures(network, val, norm);
                    var yTrain = train.Labels.data<long>().ToArray();
                    var yVal = val.Labels.data<long>().ToArray();
                    var perUnit = new JsonArray();
                    var accuracies = new List<double>();
                    for (int u = 0; u < network.Units.Count; u++)
                    {
                        double accuracy = LinearProbe.Accuracy(trainFeatures[u], yTrain, valFeatures[u], yVal, network.ClassCount);
                        accuracies.Add(accuracy);
                        perUnit.Add(new JsonObject { ["unit"] = u, ["name"] = network.UnitInfos[u].Name, ["val_accuracy"] = accuracy });
                    }
                    Console.WriteLine($"{name}: " + string.Join(" ", accuracies.Select(a => (100 * a).ToString("0.0"))));
                    results.Add(new JsonObject
                    {
                        ["model"] = Path.GetFullPath(path), ["name"] = name, ["trained_with"] = info.TrainedWith, ["per_unit"] = perUnit,
                    });
                    series.Add(new ChartSeries(name, accuracies.Select((_, u) => (double)u).ToList(), accuracies.Select(a => 100 * a).ToList()));
                }
                var json = new JsonObject
                {
                    ["probe"] = "linear softmax classifier on globally pooled, standardised features; full-batch Adam, 300 steps",
                    ["train_images"] = nTrain, ["val_images"] = nVal, ["models"] = results,
                };
                AtomicFile.WriteText(Path.Combine(outDir, "probe.json"), json.ToJsonString(Indented));
                Charts.Line(Path.Combine(outDir, "probe.png"), "Linear separability after each unit", "unit (0 = stem)", "probe accuracy (%)", series);
                Console.WriteLine($"wrote {Path.Combine(outDir, "probe.json")} and probe.png");
                return 0;
            });
        }));
        return command;
    }

    public static Command CkaCommand()
    {
        var model = new Option<string[]>("--model")
        {
            Description = "Checkpoints to compare with the reference.", Required = true, AllowMultipleArgumentsPerToken = true,
        };
        var reference = new Option<string>("--reference") { Description = "The reference checkpoint (an end-to-end model).", Required = true };
        var data = DataOption();
        var images = new Option<int>("--images") { Description = "Images (from the end of --data).", DefaultValueFactory = _ => 1000 };
        var batch = CommonOptions.BatchSize("Minibatch of the CKA estimator.");
        var output = new Option<string>("--out") { Description = "Output folder.", Required = true };
        var command = new Command("cka", "Linear CKA between each unit of a model and the same unit of a reference (Figure 5).")
        {
            model, reference, data, images, batch, output,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            using var all = ReadData(parse.GetValue(data));
            int n = parse.GetValue(images), b = parse.GetValue(batch);
            if (n < 4 || n > all.Count) throw new CliException($"--images {n} must be between 4 and the {all.Count} images of --data.");
            if (b < 4) throw new CliException("--batch-size must be at least 4 (the unbiased HSIC needs 4 samples).");
            using var subset = all.Slice(all.Count - n, n);
            var (refNet, refInfo, refName) = LoadModel(parse.GetValue(reference)!);
            using var _ = refNet;
            var outDir = parse.GetValue(output)!;
            return OutputFolders.Write(parse, outDir, output.Name, () =>
            {
                var results = new JsonArray();
                var series = new List<ChartSeries>();
                foreach (var path in parse.GetValue(model)!)
                {
                    var (network, info, name) = LoadModel(path);
                    using var __ = network;
                    var values = Cka.PerUnit(network, refNet, subset, NormalizationOf(info), b);
                    Console.WriteLine($"{name} vs {refName}: " + string.Join(" ", values.Select(v => v.ToString("0.000"))));
                    results.Add(new JsonObject
                    {
                        ["model"] = Path.GetFullPath(path), ["name"] = name,
                        ["per_unit"] = new JsonArray(values
                            .Select((v, u) => (JsonNode)new JsonObject { ["unit"] = u, ["name"] = network.UnitInfos[u].Name, ["cka"] = v })
                            .ToArray()),
                    });
                    series.Add(new ChartSeries(name, values.Select((_, u) => (double)u).ToList(), values.ToList()));
                }
                var json = new JsonObject
                {
                    ["estimator"] = "linear CKA, minibatch estimator (mean of unbiased HSIC over minibatches, Nguyen et al. 2021) on flattened unit outputs",
                    ["reference"] = Path.GetFullPath(parse.GetValue(reference)!), ["images"] = n, ["batch_size"] = b, ["models"] = results,
                };
                AtomicFile.WriteText(Path.Combine(outDir, "cka.json"), json.ToJsonString(Indented));
                Charts.Line(Path.Combine(outDir, "cka.png"), $"Linear CKA with {refName}, unit by unit", "unit (0 = stem)", "CKA", series);
                Console.WriteLine($"wrote {Path.Combine(outDir, "cka.json")} and cka.png");
                return 0;
            });
        }));
        return command;
    }

    public static Command Features()
    {
        var model = new Option<string>("--model") { Description = "Checkpoint.", Required = true };
        var data = DataOption();
        var image = new Option<int>("--image") { Description = "Index of the image in --data.", DefaultValueFactory = _ => 0 };
        var unit = new Option<int>("--unit") { Description = "Unit (0 = stem).", Required = true };
        var output = new Option<string>("--out") { Description = "Output folder.", Required = true };
        var command = new Command("features", "One unit's feature maps for one image as a PNG grid (Figure 3).") { model, data, image, unit, output };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            using var all = ReadData(parse.GetValue(data));
            int index = parse.GetValue(image);
            if (index < 0 || index >= all.Count) throw new CliException($"--image {index} is outside the {all.Count} images of --data.");
            var (network, info, name) = LoadModel(parse.GetValue(model)!);
            using var _ = network;
            var outDir = parse.GetValue(output)!;
            return OutputFolders.Write(parse, outDir, output.Name, () =>
            {
                int u = parse.GetValue(unit);
                if (u < 0 || u >= network.Units.Count)
                    throw new CliException($"--unit {u} must be between 0 and {network.Units.Count - 1} for {network.Architecture}.");
                var path = Path.Combine(outDir, $"features-{name}-unit{u}-image{index}.png");
                int channels = FeatureMaps.WriteGrid(network, all.Images[index], NormalizationOf(info), u, path);
                Console.WriteLine($"wrote {path} ({channels} channels of {network.UnitInfos[u].Name})");
                return 0;
            });
        }));
        return command;
    }
}
