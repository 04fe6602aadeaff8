using Man.ML.MLNet;
using Man.ML.Samples.MLNet;
using Man.ML.Training;
using Microsoft.ML;
using Microsoft.ML.Data;
using SkiaSharp;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

/// <summary>What the ML.NET face does with data: images of any shape and colour type, early stopping, a held-out
/// fraction, views that cannot shuffle.</summary>
[TestClass]
public sealed class MLNetDataTests
{
    private static IEstimator<ITransformer> Preprocessing(MLContext context) =>
        context.Transforms.Conversion.MapValueToKey("Label")
            .Append(context.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImageRow.ImagePath)));

    // Two classes a network separates at once: dark and bright images, with noise; every 4th image held for validation.
    private static (List<ImageRow> Train, List<ImageRow> Validation) WriteShapesAndColourTypes(string root)
    {
        var random = new Random(7);
        var rows = new List<ImageRow>();
        var formats = new[] { (SKColorType.Gray8, SKAlphaType.Opaque),
            (SKColorType.Rgba8888, SKAlphaType.Unpremul), (SKColorType.Rgb888x, SKAlphaType.Opaque) };
        var sizes = new[] { (48, 30), (30, 52), (40, 40), (64, 24) };
        foreach (var label in new[] { "bright", "dark" })
        {
            Directory.CreateDirectory(Path.Combine(root, label));
            for (int i = 0; i < 48; i++)
            {
                var (w, h) = sizes[i % sizes.Length];
                var (colorType, alpha) = formats[i % formats.Length];
                using var bitmap = new SKBitmap(new SKImageInfo(w, h, colorType, alpha));
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++)
                    {
                        byte v = (byte)Math.Clamp((label == "bright" ? 190 : 60) + random.Next(-50, 51), 0, 255);
                        bitmap.SetPixel(x, y, new SKColor(v, v, v, (byte)(colorType == SKColorType.Rgba8888 ? 128 + random.Next(128) : 255)));
                    }
                var path = Path.Combine(root, label, $"{i:D3}.png");
                using (var file = File.Create(path)) bitmap.Encode(file, SKEncodedImageFormat.Png, 100);
                rows.Add(new ImageRow { ImagePath = path, Label = label });
            }
        }
        return (rows.Where((_, i) => i % 4 != 3).ToList(), rows.Where((_, i) => i % 4 == 3).ToList());
    }

    [TestMethod]
    [DataRow("resnet8", Data.ImageRecipe.Automatic)]
    [DataRow("resnet8", Data.ImageRecipe.ImageNet)]
    public void GrayscaleRgbaAndNonSquarePngsTrainWithoutConversion(string architecture, Data.ImageRecipe recipe)
    {
        var folder = TestSupport.NewTempFolder();
        try
        {
            var (trainRows, validationRows) = WriteShapesAndColourTypes(folder);
            var mlContext = new MLContext(0);
            var train = mlContext.Data.LoadFromEnumerable(trainRows);
            var validation = mlContext.Data.LoadFromEnumerable(validationRows);
            var model = Preprocessing(mlContext)
                .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
                {
                    Architecture = architecture, ImageSize = 32, K = 2, Epochs = 4, BatchSize = 24, Seed = 1, ImageRecipe = recipe,
                })).Fit(train);
            var man = model.LastTransformer;
            Assert.AreEqual(recipe == Data.ImageRecipe.ImageNet || architecture == "resnet18" ? Data.ImageRecipe.ImageNet : Data.ImageRecipe.Cifar,
                man.ImageRecipe);
            // Grayscale images become three equal planes: the measured means of R, G and B agree.
            Assert.AreEqual(man.Normalization.Mean[0], man.Normalization.Mean[1], 1e-6);
            Assert.AreEqual(man.Normalization.Mean[1], man.Normalization.Mean[2], 1e-6);
            var metrics = mlContext.MulticlassClassification.Evaluate(model.Transform(validation));
            Assert.IsGreaterThanOrEqualTo(0.75, metrics.MicroAccuracy,
                $"{architecture} ({man.ImageRecipe}) separates dark from bright images only {metrics.MicroAccuracy:P0} of the time");
        }
        finally { Directory.Delete(folder, true); }
    }

    [TestMethod]
    public void EarlyStoppingStopsAStalledRunAndReturnsTheBestEpochsModel()
    {
        var mlContext = new MLContext(0);
        var train = mlContext.Data.LoadFromEnumerable(ImageFolderSample.ListImages(ImageFolderFixture.Train).Where((_, i) => i % 4 == 0).ToList());
        var validationRows = ImageFolderSample.ListImages(ImageFolderFixture.Validation);
        var validation = mlContext.Data.LoadFromEnumerable(validationRows);
        var preprocessing = Preprocessing(mlContext).Fit(train);
        var epochs = new List<EpochMetrics>();
        var messages = new List<string>();
        mlContext.Log += (_, e) => { if (e.Message.Contains("Man.ML")) lock (messages) messages.Add(e.Message); };
        // A learning rate of 1e-7 all but freezes the weights: after the first epoch (which moves batch norm's
        // statistics) the validation accuracy cannot improve by the 10 points MinDelta asks. (Here it moves 6.0, 8.5,
        // 8.5 %: the last epoch's weights score differently from the first's, so handing back the wrong ones fails.)
        using var model = mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
        {
            Architecture = "resnet8", K = 2, Epochs = 10, BatchSize = 50, Seed = 2, LearningRate = 1e-7,
            ValidationSet = preprocessing.Transform(validation), MetricsCallback = epochs.Add,
            EarlyStopping = new EarlyStopping(EarlyStoppingMetric.Accuracy, Patience: 2, MinDelta: 0.1),
        }).Fit(preprocessing.Transform(train));
        Assert.HasCount(3, epochs, "with patience 2 a run stalled from epoch 1 stops after epoch 3; validation accuracies " +
            string.Join(", ", epochs.Select(m => m.ValAccuracy!.Value.ToString("P1"))));
        Assert.IsTrue(messages.Any(m => m.Contains("stopped early after epoch 3") && m.Contains("returning epoch 1's weights")), string.Join("\n", messages));
        // The returned model is epoch 1's: its accuracy on the validation set is the one measured after epoch 1.
        var metrics = mlContext.MulticlassClassification.Evaluate(model.Transform(preprocessing.Transform(validation)));
        Assert.AreEqual(epochs[0].ValAccuracy!.Value, metrics.MicroAccuracy, 1e-9);
        // The model says what it is: 3 of the 10 planned epochs ran, and it holds epoch 1's weights.
        Assert.AreEqual("resnet8 dgl+man K=2, 3 of 10 epochs run, weights of epoch 1, seed 2", model.TrainedWith);

        var without = new ManImageClassificationTrainer.Options { Architecture = "resnet8", K = 2, EarlyStopping = new EarlyStopping() };
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(without));
        Assert.AreEqual("EarlyStopping", e.Option);
        var impatient = new ManImageClassificationTrainer.Options { Architecture = "resnet8", K = 2, ValidationSetFraction = 0.1,
            EarlyStopping = new EarlyStopping(Patience: 0) };
        Assert.ThrowsExactly<InvalidOptionException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(impatient));
    }

    [TestMethod]
    public void TheMonitorKeepsTheBestEpochsWeightsOnAccuracyOrLoss()
    {
        using var network = Models.Architectures.Create("resnet8", 10, 32);
        var weight = network.parameters().First();
        void Set(float v) { using var _ = no_grad(); weight.Filled(v); }
        using (var monitor = new EarlyStoppingMonitor(new EarlyStopping(EarlyStoppingMetric.Loss, Patience: 2, MinDelta: 0.1)))
        {
            Set(1); Assert.IsFalse(monitor.Observe(new EpochMetrics { Epoch = 1, ValLoss = 2.0, ValAccuracy = 0.1 }, network));
            Set(2); Assert.IsFalse(monitor.Observe(new EpochMetrics { Epoch = 2, ValLoss = 1.5, ValAccuracy = 0.2 }, network));
            Set(3); Assert.IsFalse(monitor.Observe(new EpochMetrics { Epoch = 3, ValLoss = 1.45, ValAccuracy = 0.9 }, network)); // < MinDelta better
            Set(4); Assert.IsTrue(monitor.Observe(new EpochMetrics { Epoch = 4, ValLoss = 1.7, ValAccuracy = 0.9 }, network));
            Assert.AreEqual(2, monitor.BestEpoch);
            monitor.RestoreBest(network);
            Assert.AreEqual(2f, weight.max().item<float>());
            Assert.AreEqual(2f, weight.min().item<float>());
        }
        using (var monitor = new EarlyStoppingMonitor(new EarlyStopping(EarlyStoppingMetric.Accuracy, Patience: 1)))
        {
            Set(5); Assert.IsFalse(monitor.Observe(new EpochMetrics { Epoch = 1, ValAccuracy = 0.5 }, network));
            Set(6); Assert.IsFalse(monitor.Observe(new EpochMetrics { Epoch = 2, ValAccuracy = 0.51 }, network));
            Set(7); Assert.IsTrue(monitor.Observe(new EpochMetrics { Epoch = 3, ValAccuracy = 0.51 }, network)); // equal is no improvement
            monitor.RestoreBest(network);
            Assert.AreEqual(6f, weight.mean().item<float>());
        }
    }

    [TestMethod]
    public void AHeldOutFractionIsTheSameForTheSameSeedAndDiffersForAnother()
    {
        var mlContext = new MLContext(0);
        var train = Preprocessing(mlContext).Fit(mlContext.Data.LoadFromEnumerable(ImageFolderSample.ListImages(ImageFolderFixture.Train)));
        var data = train.Transform(mlContext.Data.LoadFromEnumerable(ImageFolderSample.ListImages(ImageFolderFixture.Train)
            .Where((_, i) => i % 5 == 0).ToList()));
        string Held(int seed)
        {
            var messages = new List<string>();
            var context = new MLContext(0);
            context.Log += (_, e) => { if (e.Message.Contains("Man.ML")) lock (messages) messages.Add(e.Message); };
            var epochs = new List<EpochMetrics>();
            using var model = context.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
            {
                Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 40, Seed = seed, ValidationSetFraction = 0.2, MetricsCallback = epochs.Add,
            }).Fit(data);
            return $"{BitConverter.DoubleToInt64Bits(epochs[0].ValLoss!.Value):x16} {messages.Single(m => m.Contains("normalisation measured"))}";
        }
        // The held-out rows decide what the normalisation is measured on (the kept rows) and the validation loss.
        string first = Held(4);
        Assert.AreEqual(first, Held(4), "the same seed held out other rows or trained differently");
        Assert.AreNotEqual(first.Split(' ', 2)[1], Held(5).Split(' ', 2)[1], "another seed held out the same rows");
    }

    [TestMethod]
    public void AViewThatCannotSeekIsReadInAFullPermutationInChunks()
    {
        var folder = TestSupport.NewTempFolder();
        try
        {
            var rows = ImageFolderSample.ListImages(ImageFolderFixture.Train).Where((_, i) => i % 5 == 0).ToList();
            var file = Path.Combine(folder, "images.tsv");
            File.WriteAllLines(file, rows.Select(r => $"{r.ImagePath}\t{r.Label}"));
            var mlContext = new MLContext(0);
            var messages = new List<string>();
            mlContext.Log += (_, e) => { if (e.Message.Contains("Man.ML")) lock (messages) messages.Add(e.Message); };
            var text = mlContext.Data.LoadFromTextFile(file, new[]
            {
                new TextLoader.Column(nameof(ImageRow.ImagePath), DataKind.String, 0), new TextLoader.Column("Label", DataKind.String, 1),
            });
            Assert.IsFalse(text.CanShuffle);
            var prepared = Preprocessing(mlContext).Fit(text).Transform(text);
            using var model = mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
            {
                Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 40, ShuffleBufferSize = 64,
            }).Fit(prepared);
            Assert.IsTrue(messages.Any(m => m.Contains("4 passes of at most 64 decoded rows")), string.Join("\n", messages));
            // The chunks change nothing but memory: the same run with every row in one chunk trains the same model.
            using var whole = mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
            {
                Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 40, ShuffleBufferSize = 1000,
            }).Fit(prepared);
            var a = model.Transform(prepared).GetColumn<VBuffer<float>>("Score").SelectMany(v => v.DenseValues()).ToArray();
            var b = whole.Transform(prepared).GetColumn<VBuffer<float>>("Score").SelectMany(v => v.DenseValues()).ToArray();
            CollectionAssert.AreEqual(b, a, "training with 64-row chunks differs from one chunk");
        }
        finally { Directory.Delete(folder, true); }
    }
}

[TestClass]
public sealed class MLNetPresetTests
{
    [TestMethod]
    public void APresetsOptionsResolveToThePresetsRun()
    {
        var mlContext = new MLContext(0);
        // One preset of each data set and rule, with and without MAN: the ML.NET options resolve to the same run.
        var presets = ExperimentPresets.All.GroupBy(p => (p.Options.Dataset.Name, p.Options.Rule, p.Options.Man is null)).Select(g => g.First()).ToList();
        Assert.IsGreaterThanOrEqualTo(6, presets.Count);
        foreach (var preset in presets)
        {
            var options = ManImageClassificationTrainer.Options.FromPreset(preset.Name);
            var plan = mlContext.MulticlassClassification.Trainers.ManImageClassification(options).ResolvePlan(10);
            var expected = RunPlan.Resolve(preset.Options, 10, preset.Options.ImageSize ?? preset.Options.Dataset.ImageSize);
            Assert.AreEqual(expected.Summary, plan.Summary, preset.Name);
            CollectionAssert.AreEqual(expected.SegmentEnds.ToArray(), plan.SegmentEnds.ToArray(), preset.Name);
            CollectionAssert.AreEqual(expected.Heads.ToArray(), plan.Heads.ToArray(), preset.Name);
            Assert.AreEqual(expected.InfoPro, plan.InfoPro, preset.Name);
            Assert.AreEqual(expected.Man, plan.Man, preset.Name);
            Assert.AreEqual(expected.LearningRate, plan.LearningRate, preset.Name);
            Assert.AreEqual(expected.Options.Epochs, plan.Options.Epochs, preset.Name);
        }
        Assert.ThrowsExactly<InvalidOptionException>(() => ManImageClassificationTrainer.Options.FromPreset("no-such-preset"));
    }
}

[TestClass]
public sealed class TensorFromArrayTests
{
    // The streaming reader hands each batch buffer round again as soon as its tensor exists: that is only sound if
    // torch.tensor(array, shape) copies the array, as PyTorch's torch.tensor does.
    [TestMethod]
    public void ATensorMadeFromAnArrayDoesNotShareItsMemory()
    {
        var pixels = new byte[] { 1, 2, 3, 4, 5, 6 };
        using var t = tensor(pixels, new long[] { 1, 2, 3 }, dtype: ScalarType.Byte);
        pixels[0] = 99;
        Array.Fill(pixels, (byte)7);
        CollectionAssert.AreEqual(new byte[] { 1, 2, 3, 4, 5, 6 }, t.data<byte>().ToArray());
    }
}
