// manml export weights: a network's weights as a PyTorch state dict (torch.save or safetensors) with torchvision's
// names, from a trained model (manml train's model.ckpt or an ML.NET model zip), from another state dict (read, checked and written again),
// or regenerated from a seed by the cross-framework generator (docs/INTEROP.md). With --logits-out it also writes the
// network's eval-mode logits on the fixed probe batch, which scripts/pytorch_interop.py compares with PyTorch's.
using System.CommandLine;
using System.Text.Json;
using Man.ML.Interop;
using Man.ML.MLNet;
using Man.ML.Models;
using Man.ML.Samples.Tooling;
using Man.ML.Training;
using static TorchSharp.torch;

namespace Man.ML.Samples.Cli;

internal static class ExportWeightsCommand
{
    public static Command Create()
    {
        var model = new Option<string?>("--model")
        {
            Description = "A trained model: manml train's DIR/model.ckpt, or an ML.NET model saved with SaveManModel (.zip).",
        };
        var arch = new Option<string?>("--arch") { Description = "Without --model: the architecture to build." };
        var classes = new Option<int>("--classes") { Description = "Without --model: number of classes.", DefaultValueFactory = _ => 10 };
        var imageSize = new Option<int?>("--image-size")
        {
            Description = "Without --model: input side (default 32 for CIFAR ResNets, 224 otherwise); only the probe batch depends on it.",
        };
        var initFrom = new Option<string?>("--init-from") { Description = "Without --model: a PyTorch state dict to load (every key checked, strict)." };
        var synthetic = new Option<int?>("--synthetic-seed")
        {
            Description = "Without --model: fill every tensor from this seed with the cross-framework generator (docs/INTEROP.md).",
        };
        var output = new Option<string>("--out") { Description = "The state dict to write (.safetensors, else torch.save's format).", Required = true };
        var format = new Option<string>("--format") { Description = "auto (by the extension), pytorch or safetensors.", DefaultValueFactory = _ => "auto" };
        var logits = new Option<string?>("--logits-out") { Description = "Also write the eval-mode logits on the fixed probe batch (JSON)." };
        var command = new Command("export-weights", "Write a network's weights as a PyTorch state dict with torchvision's names.")
            { model, arch, classes, imageSize, initFrom, synthetic, output, format, logits };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var weightsFormat = Choices.Parse<WeightsFormat>(parse.GetValue(format)!, format.Name);
            UnitChainNetwork network;
            int side;
            if (parse.GetValue(model) is { } checkpoint)
            {
                if (parse.GetValue(arch) is not null || parse.GetValue(initFrom) is not null || parse.GetValue(synthetic) is not null)
                    throw new CliException("--model brings its own network: give --arch, --init-from and --synthetic-seed only without it.");
                InputFiles.CheckRegular(checkpoint, "Model");
                if (ModelFiles.IsZip(checkpoint))
                {
                    var man = ModelFiles.Find(new Microsoft.ML.MLContext(0).Model.LoadManModel(checkpoint, out _))
                        ?? throw new CliException($"'{checkpoint}' holds no Man.ML transformer.");
                    ModelFiles.NoteUnverified(checkpoint, man.Verified);
                    (network, side) = (man.Network, man.ImageSize); // disposing the network releases what the transformer holds
                }
                else
                {
                    (network, var info) = ModelCheckpoint.Load(checkpoint);
                    ModelFiles.NoteUnverified(checkpoint, info.Verified);
                    side = info.ImageSize;
                }
            }
            else
            {
                var name = parse.GetValue(arch) ?? throw new CliException("Give --model CKPT, or --arch (with --init-from or --synthetic-seed).");
                string canonical;
                try { canonical = Architectures.Canonical(name); }
                catch (ArgumentException e) { throw new InvalidOptionException(arch.Name, $"{arch.Name}: {e.Message}"); }
                if (parse.GetValue(initFrom) is not null == parse.GetValue(synthetic) is not null)
                    throw new CliException("With --arch give exactly one of --init-from FILE and --synthetic-seed N.");
                side = parse.GetValue(imageSize) ?? (Architectures.FamilyOf(canonical) == NetworkFamily.ImageNet ? 224 : 32);
                int count = parse.GetValue(classes);
                if (count < 2) throw new CliException($"--classes must be at least 2 (got {count}).");
                network = Architectures.Create(canonical, count, side);
                if (parse.GetValue(initFrom) is { } from) PyTorchWeights.Load(network, from);
                else SyntheticWeights.Fill(network, parse.GetValue(synthetic)!.Value);
            }
            using (network)
            {
                var path = parse.GetValue(output)!;
                PyTorchWeights.Save(network, path, weightsFormat);
                Console.WriteLine($"Wrote {path}: {network.Architecture}, {network.ClassCount} classes, {network.state_dict().Count} tensors, " +
                                  $"{network.ParameterCount():N0} parameters.");
                if (parse.GetValue(logits) is { } logitsPath)
                {
                    network.eval();
                    using var scope = NewDisposeScope();
                    using var noGrad = no_grad();
                    var (images, _) = ProbeBatch.Create(side, network.ClassCount);
                    var result = network.call(images).contiguous();
                    var rows = Enumerable.Range(0, ProbeBatch.Size).Select(n => result[n].data<float>().ToArray()).ToArray();
                    AtomicFile.WriteText(logitsPath, JsonSerializer.Serialize(new
                    {
                        arch = network.Architecture,
                        classes = network.ClassCount,
                        image_size = side,
                        logits = rows,
                    }));
                    Console.WriteLine($"Wrote {logitsPath}: eval-mode logits of the {ProbeBatch.Size}-image probe batch at {side}×{side}.");
                }
            }
            return 0;
        }));
        return command;
    }
}
