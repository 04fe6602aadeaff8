// manml export-onnx: a trained model as an ONNX inference graph, scored without TorchSharp or libtorch (ML.NET's
// ApplyOnnxModel, ONNX Runtime; the Man.ML.OnnxScoring sample). Takes manml train's model.ckpt or an ML.NET model saved
// with SaveManModel.
using System.CommandLine;
using Man.ML.Data;
using Man.ML.Interop;
using Man.ML.MLNet;
using Man.ML.Models;
using Man.ML.Training;
using Microsoft.ML;

namespace Man.ML.Samples.Cli;

internal static class ExportOnnxCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "manml train's DIR/model.ckpt, or an ML.NET model saved with SaveManModel (.zip).", Required = true };
        var output = new Option<string>("--out") { Description = "The ONNX file to write.", Required = true };
        var recipe = new Option<string>("--recipe") { Description = "For a model.ckpt: the scoring recipe its images are cropped with, auto (CIFAR's for CIFAR ResNets, ImageNet's otherwise), cifar or imagenet.", DefaultValueFactory = _ => "auto" };
        var command = new Command("export-onnx", "Write a trained model as an ONNX inference graph (input Pixels: planar RGB 0..255; output Score: probabilities).") { model, output, recipe };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var path = parse.GetValue(model)!;
            var target = parse.GetValue(output)!;
            if (!File.Exists(path)) throw new FileNotFoundException($"Model '{path}' does not exist.", path);
            var chosen = Choices.Parse<ImageRecipe>(parse.GetValue(recipe)!, recipe.Name);
            if (ModelFiles.IsZip(path))
            {
                if (chosen != ImageRecipe.Automatic) throw new CliException("An ML.NET model keeps the recipe it was trained with: --recipe is for a model.ckpt.");
                var loaded = new MLContext(0).Model.LoadManModel(path, out _);
                var man = ModelFiles.Find(loaded) ?? throw new CliException($"'{path}' holds no Man.ML transformer.");
                man.SaveAsOnnx(target);
                Report(target, man.Network, man.ImageSize, man.ImageRecipe);
                man.Dispose();
            }
            else
            {
                var (network, info) = ModelCheckpoint.Load(path);
                using (network)
                {
                    network.eval();
                    var resolved = chosen != ImageRecipe.Automatic ? chosen
                        : network.Family == NetworkFamily.ImageNet ? ImageRecipe.ImageNet : ImageRecipe.Cifar;
                    var names = info.ClassNames.Length == info.Classes ? info.ClassNames : Enumerable.Range(0, info.Classes).Select(i => i.ToString()).ToArray();
                    OnnxExport.Save(network, target, new Normalization(info.NormalizationMean, info.NormalizationStd), names, info.ImageSize, resolved, info.TrainedWith);
                    Report(target, network, info.ImageSize, resolved);
                }
            }
            return 0;
        }));
        return command;
    }

    private static void Report(string path, UnitChainNetwork network, int size, ImageRecipe recipe) =>
        Console.WriteLine($"Wrote {path} ({new FileInfo(path).Length / 1e6:F1} MB): {network.Architecture}, {network.ClassCount} classes, input {OnnxExport.InputName} 3x{size}x{size} ({Choices.Name(recipe)} recipe), output {OnnxExport.OutputName}, opset {OnnxExport.OpsetVersion}.");
}
