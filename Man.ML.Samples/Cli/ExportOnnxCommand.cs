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
        var model = new Option<string>("--model")
        {
            Description = "manml train's DIR/model.ckpt, or an ML.NET model saved with SaveManModel (.zip).", Required = true,
        };
        var output = new Option<string>("--out") { Description = "The ONNX file to write.", Required = true };
        var recipe = new Option<string>("--recipe")
        {
            Description = "Only for a model.ckpt written before the recipe was recorded: the scoring recipe its images are cropped with, auto (the one its " +
                          "architecture implies), cifar or imagenet. A model.ckpt that records its recipe is exported with it.",
            DefaultValueFactory = _ => "auto",
        };
        var command = new Command("export-onnx",
            "Write a trained model as an ONNX inference graph (input Pixels: planar RGB 0..255; output Score: probabilities).") { model, output, recipe };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var path = parse.GetValue(model)!;
            var target = parse.GetValue(output)!;
            InputFiles.CheckRegular(path, "Model");
            var chosen = Choices.Parse<ImageRecipe>(parse.GetValue(recipe)!, recipe.Name);
            if (ModelFiles.IsZip(path))
            {
                if (chosen != ImageRecipe.Automatic)
                    throw new CliException("An ML.NET model keeps the recipe it was trained with: --recipe is for a model.ckpt.");
                var loaded = new MLContext(0).Model.LoadManModel(path, out _);
                var man = ModelFiles.Find(loaded) ?? throw new CliException($"'{path}' holds no Man.ML transformer.");
                ModelFiles.NoteUnverified(path, man.Verified);
                man.SaveAsOnnx(target);
                Report(target, man.Network, man.ImageSize, man.ImageRecipe);
                man.Dispose();
            }
            else
            {
                var (network, info) = ModelCheckpoint.Load(path);
                ModelFiles.NoteUnverified(path, info.Verified);
                using (network)
                {
                    network.eval();
                    // The file's recipe is the model's contract; --recipe only fills the gap in checkpoints that predate it.
                    if (!info.RecipeInferred && chosen != ImageRecipe.Automatic && chosen != info.ImageRecipe)
                        throw new CliException($"'{path}' records the {Choices.Name(info.ImageRecipe)} recipe it was trained with; " +
                            $"--recipe {Choices.Name(chosen)} would score it with other crops.");
                    var resolved = info.RecipeInferred && chosen != ImageRecipe.Automatic ? chosen : info.Recipe;
                    if (info.RecipeInferred && chosen == ImageRecipe.Automatic)
                        Console.WriteLine($"'{path}' does not record its recipe (an older checkpoint): " +
                            $"the {Choices.Name(resolved)} recipe its architecture implies is used; give --recipe if it was trained otherwise.");
                    Normalization normalization;
                    try { normalization = info.Normalization; }
                    catch (InvalidDataException e) { throw new CliException($"'{path}': {e.Message}"); }
                    var names = info.ClassNames.Length == info.Classes ? info.ClassNames
                        : Enumerable.Range(0, info.Classes).Select(i => i.ToString()).ToArray();
                    OnnxExport.Save(network, target, normalization, names, info.ImageSize, resolved, info.TrainedWith);
                    Report(target, network, info.ImageSize, resolved);
                }
            }
            return 0;
        }));
        return command;
    }

    private static void Report(string path, UnitChainNetwork network, int size, ImageRecipe recipe) =>
        Console.WriteLine($"Wrote {path} ({new FileInfo(path).Length / 1e6:F1} MB): {network.Architecture}, {network.ClassCount} classes, " +
            $"input {OnnxExport.InputName} 3x{size}x{size} ({Choices.Name(recipe)} recipe), output {OnnxExport.OutputName}, opset {OnnxExport.OpsetVersion}.");
}
