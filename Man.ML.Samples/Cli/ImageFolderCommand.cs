// manml image-folder: the ML.NET sample (image folder -> LoadImages -> Man.ML trainer -> Evaluate -> save -> load ->
// predict one image).
using System.CommandLine;
using Man.ML.MLNet;
using Man.ML.Samples.MLNet;
using Spectre.Console;

namespace Man.ML.Samples.Cli;

internal static class ImageFolderCommand
{
    public static Command Create()
    {
        var images = new Option<string>("--images") { Description = "Folder of class folders (or with train/ and val/ inside).", Required = true };
        var epochs = new Option<int>("--epochs")
        {
            Description = "Epochs (default: the library's, 3).", DefaultValueFactory = _ => Man.ML.Training.TrainingOptions.DefaultEpochs,
        };
        var arch = CommonOptions.Arch();
        var k = CommonOptions.K();
        var batch = CommonOptions.BatchSize();
        var seed = CommonOptions.Seed();
        var size = new Option<int>("--image-size")
        {
            Description = "Network input side S (images of any size are cropped and resized to it).",
            DefaultValueFactory = _ => new Man.ML.MLNet.ManImageClassificationTrainer.Options().ImageSize,
        };
        var rule = CommonOptions.Rule(); // e2e needs --k 1 and --without-man
        var withoutMan = new Option<bool>("--without-man") { Description = "Train without Momentum Auxiliary Networks." };
        var recipe = new Option<string>("--recipe")
        {
            Description = "Data recipe: auto (by architecture), cifar or imagenet.", DefaultValueFactory = _ => "auto",
        };
        var patience = new Option<int>("--patience")
        {
            Description = "Early stopping: stop after this many epochs without a better validation accuracy and keep the best epoch's model (0: off).",
        };
        var maxPixels = CommonOptions.MaxImagePixels();
        var precision = CommonOptions.Precision();
        var output = new Option<string>("--out") { Description = "Output folder for the saved model.", DefaultValueFactory = _ => "runs/image-folder" };
        var pretrained = CommonOptions.Pretrained();
        var pretrainedCache = CommonOptions.PretrainedCache();
        var initFrom = CommonOptions.InitFrom();
        var normalization = new Option<string?>("--normalization")
        {
            Description = "Input normalisation: cifar, imagenet, or measured on the training images (default; the pretrained weights' with --pretrained).",
        };
        var lr = new Option<double?>("--lr") { Description = "Initial learning rate (default 0.1·B/128)." };
        var tensorBoard = CommonOptions.TensorBoard();
        var command = new Command("image-folder", "ML.NET sample: train a MAN-enhanced ResNet on an image folder, evaluate, save, load, predict.")
        {
            images, epochs, arch, k, batch, seed, size, rule, withoutMan, recipe, patience, maxPixels, precision, output,
            pretrained, pretrainedCache, initFrom, normalization, lr, tensorBoard,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var options = new ManImageClassificationTrainer.Options
            {
                Architecture = parse.GetValue(arch)!, K = parse.GetValue(k), Epochs = parse.GetValue(epochs),
                BatchSize = parse.GetValue(batch), Seed = parse.GetValue(seed), ImageSize = parse.GetValue(size),
                Rule = Choices.Parse<Man.ML.Local.LearningRule>(parse.GetValue(rule)!, "--rule"), UseMan = !parse.GetValue(withoutMan),
                ImageRecipe = Choices.Parse<Man.ML.Data.ImageRecipe>(parse.GetValue(recipe)!, "--recipe"),
                MaxImagePixels = CommonOptions.GetMaxImagePixels(parse, maxPixels),
                Precision = Choices.Parse<Man.ML.Models.TrainingPrecision>(parse.GetValue(precision)!, precision.Name),
                EarlyStopping = parse.GetValue(patience) > 0 ? new Man.ML.Training.EarlyStopping(Patience: parse.GetValue(patience)) : null,
                Pretrained = parse.GetValue(pretrained),
                PretrainedCache = parse.GetValue(pretrainedCache),
                InitFrom = parse.GetValue(initFrom),
                LearningRate = parse.GetValue(lr),
                TensorBoardDirectory = parse.GetValue(tensorBoard),
                Normalization = parse.GetValue(normalization) switch
                {
                    null or "measured" => null,
                    "cifar" => Man.ML.Data.Normalization.Cifar,
                    "imagenet" => Man.ML.Data.ImageNetTransform.ImageNetNormalization,
                    var other => throw new CliException($"--normalization must be cifar, imagenet or measured (got '{other}')."),
                },
            };
            var outDir = parse.GetValue(output)!;
            ImageFolderSample.Outcome? outcome = null;
            OutputFolders.Write(parse, outDir, output.Name, () =>
            {
                // The trainer names its options as the API does (BatchSize): say which option of this command sets it.
                try { outcome = ImageFolderSample.Run(parse.GetValue(images)!, outDir, options, line => AnsiConsole.WriteLine(line), parse.GetValue(seed)); }
                catch (InvalidOptionException e) when (e.Option == nameof(options.BatchSize))
                {
                    throw new InvalidOptionException(batch.Name, $"{batch.Name}: {e.Message}");
                }
                return 0;
            });
            var done = outcome!;
            var table = new Table().Title("validation accuracy per class (recall)").AddColumns("class", "accuracy");
            foreach (var (c, a) in done.PerClass) table.AddRow(Markup.Escape(c), a.ToString("P1"));
            AnsiConsole.Write(table);
            AnsiConsole.MarkupLine($"Evaluate on {done.ValidationImages} validation images (trained on {done.TrainImages}): " +
                                   $"micro-accuracy [bold]{done.MicroAccuracy:P2}[/], macro-accuracy {done.MacroAccuracy:P2}, " +
                                   $"log-loss {done.LogLoss:0.000}");
            AnsiConsole.MarkupLine($"saved and reloaded {Markup.Escape(done.ModelPath)}; PredictionEngine on {Markup.Escape(done.Example.ImagePath)} " +
                                   $"(label {Markup.Escape(done.Example.Label)}): " +
                                   $"predicted [bold]{Markup.Escape(done.Prediction.PredictedLabelValue)}[/] " +
                                   $"with probability {done.Prediction.Score.Max():P1}");
            AnsiConsole.MarkupLine($"wrote {Markup.Escape(done.OnnxPath)}: score it without TorchSharp or libtorch with " +
                                   Markup.Escape($"dotnet run --project Man.ML.OnnxScoring -c Release -- --model {done.OnnxPath} --images <folder>"));
            return 0;
        }));
        return command;
    }
}
