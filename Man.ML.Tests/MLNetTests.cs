using System.Text.Json;
using Man.ML.MLNet;
using Man.ML.Samples.MLNet;
using Microsoft.ML;
using Microsoft.ML.Data;

namespace Man.ML.Tests;

[TestClass]
public sealed class MLNetTests
{
    private static MLContext mlContext = null!;
    private static ITransformer model = null!;
    private static IDataView trainData = null!;
    private static IDataView validationData = null!;
    private static List<ImageRow> validationRows = null!;
    private static string folder = "";

    private static IEstimator<ITransformer> Preprocessing(MLContext context) =>
        context.Transforms.Conversion.MapValueToKey("Label")
            .Append(context.Transforms.LoadImages("Image", imageFolder: "", inputColumnName: nameof(ImageRow.ImagePath)));

    private static ManImageClassificationTrainer.Options SmallOptions(int epochs = 3) => new()
    {
        Architecture = "resnet8", K = 2, Epochs = epochs, BatchSize = 64, Seed = 1,
    };

    [ClassInitialize]
    public static void TrainSmallModel(TestContext _)
    {
        folder = TestSupport.NewTempFolder();
        mlContext = new MLContext(0);
        trainData = mlContext.Data.LoadFromEnumerable(ImageFolderSample.ListImages(ImageFolderFixture.Train));
        validationRows = ImageFolderSample.ListImages(ImageFolderFixture.Validation);
        validationData = mlContext.Data.LoadFromEnumerable(validationRows);
        model = Preprocessing(mlContext)
            .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(SmallOptions()))
            .Fit(trainData);
    }

    [ClassCleanup]
    public static void Cleanup() => Directory.Delete(folder, true);

    private static void AssertOutputSchema(DataViewSchema schema)
    {
        var score = schema["Score"];
        Assert.IsInstanceOfType<VectorDataViewType>(score.Type);
        Assert.AreEqual(10, ((VectorDataViewType)score.Type).Size);
        Assert.AreEqual(NumberDataViewType.Single, ((VectorDataViewType)score.Type).ItemType);
        var predicted = schema["PredictedLabel"];
        Assert.IsInstanceOfType<KeyDataViewType>(predicted.Type);
        Assert.AreEqual(10UL, ((KeyDataViewType)predicted.Type).Count);
        var keyValues = default(VBuffer<ReadOnlyMemory<char>>);
        predicted.GetKeyValues(ref keyValues);
        CollectionAssert.AreEqual(new[] { "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck" },
            keyValues.DenseValues().Select(v => v.ToString()).ToArray());
    }

    private static string[][] ScoreBits(ITransformer transformer, IDataView data) =>
        transformer.Transform(data).GetColumn<VBuffer<float>>("Score")
            .Select(v => v.DenseValues().Select(f => BitConverter.SingleToInt32Bits(f).ToString("x8")).ToArray()).ToArray();

    [TestMethod]
    public void OutputSchemaHasAFixedSizeScoreAndAKeyedPredictedLabelBeforeAndAfterSaving()
    {
        AssertOutputSchema(model.GetOutputSchema(trainData.Schema));
        AssertOutputSchema(model.Transform(validationData).Schema);
        var path = Path.Combine(folder, "schema.manml.zip");
        mlContext.Model.SaveManModel(model, trainData.Schema, path);
        var fresh = new MLContext(5);
        var loaded = fresh.Model.LoadManModel(path, out var inputSchema);
        Assert.AreEqual(trainData.Schema.Count, inputSchema.Count);
        AssertOutputSchema(loaded.GetOutputSchema(inputSchema));
        AssertOutputSchema(loaded.Transform(validationData).Schema);
        // MapKeyToValue works on the loaded model's PredictedLabel.
        var values = fresh.Transforms.Conversion.MapKeyToValue("PredictedLabelValue", "PredictedLabel")
            .Fit(loaded.Transform(validationData)).Transform(loaded.Transform(validationData))
            .GetColumn<ReadOnlyMemory<char>>("PredictedLabelValue").Select(v => v.ToString()).ToList();
        Assert.AreEqual(200, values.Count);
        Assert.IsTrue(values.All(v => v.Length > 0));

        // The same through a stream (no file, no temporary file): the same scores, bit for bit.
        using var memory = new MemoryStream();
        mlContext.Model.SaveManModel(model, trainData.Schema, memory);
        memory.Position = 0;
        var fromStream = new MLContext(6).Model.LoadManModel(memory, out var streamSchema);
        Assert.AreEqual(trainData.Schema.Count, streamSchema.Count);
        var expected = ScoreBits(model, validationData);
        var actual = ScoreBits(fromStream, validationData);
        for (int i = 0; i < expected.Length; i++) CollectionAssert.AreEqual(expected[i], actual[i], $"row {i}");
    }

    [TestMethod]
    public void ALoadedModelScoresBitForBitIdenticallyInAFreshProcess()
    {
        var path = Path.Combine(folder, "process.manml.zip");
        mlContext.Model.SaveManModel(model, trainData.Schema, path);
        var expected = ScoreBits(model, validationData);
        var result = TestSupport.RunManml(new[] { "score-model", "--model", path, "--images", ImageFolderFixture.Validation });
        Assert.AreEqual(0, result.ExitCode, result.Stderr);
        using var json = JsonDocument.Parse(result.Stdout);
        var actual = json.RootElement.GetProperty("scores").EnumerateArray()
            .Select(row => row.EnumerateArray().Select(v => v.GetString()!).ToArray()).ToArray();
        Assert.AreEqual(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) CollectionAssert.AreEqual(expected[i], actual[i], $"row {i}");
        StringAssert.Contains(json.RootElement.GetProperty("score_type").GetString(), "10");
        StringAssert.Contains(json.RootElement.GetProperty("predicted_label_type").GetString(), "Key");
    }

    [TestMethod]
    public void EvaluateIsAboveChanceAfterAShortRun()
    {
        var metrics = mlContext.MulticlassClassification.Evaluate(model.Transform(validationData));
        Assert.IsTrue(metrics.MicroAccuracy > 0.15, $"micro-accuracy {metrics.MicroAccuracy:P1} on 200 images is not above chance (10%)");
    }

    [TestMethod]
    public void PrecisionReachesThePlanAndABFloat16EmulatedFitGivesAFloat32ModelThatScores()
    {
        var options = SmallOptions(1);
        options.Precision = Models.TrainingPrecision.BFloat16Emulated;
        var trainer = mlContext.MulticlassClassification.Trainers.ManImageClassification(options);
        Assert.AreEqual(Models.TrainingPrecision.BFloat16Emulated, trainer.ResolvePlan(10).Precision);
        var fitted = Preprocessing(mlContext).Append(trainer).Fit(trainData);
        var man = fitted.LastTransformer;
        Assert.IsTrue(man.Network.parameters().All(p => p.dtype == TorchSharp.torch.ScalarType.Float32), "the model is its float32 master weights");
        var scores = fitted.Transform(validationData).GetColumn<VBuffer<float>>("Score").Take(5).ToList();
        Assert.IsTrue(scores.All(v => v.DenseValues().All(float.IsFinite) && Math.Abs(v.DenseValues().Sum() - 1) < 1e-4), "float32 probabilities");
    }

    [TestMethod]
    public void APipelinedFitInLockStepGivesTheSequentialModel()
    {
        var pipelined = SmallOptions(1);
        pipelined.PipelineStages = 2;
        pipelined.PipelineDepth = 0;
        pipelined.StageDevices = new[] { "cpu", "cpu" };
        pipelined.StageThreads = 1;
        var trainer = mlContext.MulticlassClassification.Trainers.ManImageClassification(pipelined);
        Assert.AreEqual(2, trainer.ResolvePlan(10).Pipeline!.Stages.Count);
        int threads = TorchSharp.torch.get_num_threads();
        TorchSharp.torch.set_num_threads(1); // the stages' thread count: the same kernels in both fits
        try
        {
            var sequential = Preprocessing(mlContext).Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(SmallOptions(1)))
                .Fit(trainData).LastTransformer;
            var fitted = Preprocessing(mlContext).Append(trainer).Fit(trainData).LastTransformer;
            foreach (var ((name, a), (_, b)) in sequential.Network.named_parameters().Zip(fitted.Network.named_parameters()))
                Assert.IsTrue(a.eq(b).all().item<bool>(), $"{name} differs between the sequential and the lock-step pipelined fit");
        }
        finally
        {
            TorchSharp.torch.set_num_threads(threads);
        }
    }

    [TestMethod]
    public void BFloat16IsRefusedByTheTrainerOnACpuWithoutBFloat16Instructions()
    {
        var options = SmallOptions(1);
        options.Precision = Models.TrainingPrecision.BFloat16;
        if (Models.BFloat16Support.Cpu)
        {
            // This CPU has avx512_bf16 or amx_bf16: bf16 is accepted.
            Assert.AreEqual(Models.TrainingPrecision.BFloat16,
                mlContext.MulticlassClassification.Trainers.ManImageClassification(options).ResolvePlan(10).Precision);
            return;
        }
        // As every option: when the trainer is made, before a pipeline is fitted or any image read.
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(options),
            "this CPU has no bf16 instructions (neither avx512_bf16 nor amx_bf16), so bf16 must be refused");
        Assert.AreEqual("Precision", e.Option);
        StringAssert.Contains(e.Message, "bf16-emulated");
    }

    [TestMethod]
    public void TransformAndEnginesFromSeveralThreadsAtOnceGiveTheSequentialScores()
    {
        // One transformer shared by 6 threads: each Transforms the validation set, bit for bit as one thread alone does.
        var sequential = ScoreBits(model, validationData).Select(r => string.Join(",", r)).ToArray();
        var concurrent = new string[6][];
        using (var start = new Barrier(6))
            Parallel.For(0, 6, new ParallelOptions { MaxDegreeOfParallelism = 6 }, t =>
            {
                start.SignalAndWait();
                concurrent[t] = ScoreBits(model, validationData).Select(r => string.Join(",", r)).ToArray();
            });
        for (int t = 0; t < 6; t++) CollectionAssert.AreEqual(sequential, concurrent[t], $"thread {t}'s Transform");

        // PredictionEngine is not thread-safe (ML.NET's rule): one engine per thread over the shared model.
        float[] Predict(PredictionEngine<ImageRow, EnginePrediction> engine, int i) => engine.Predict(validationRows[i]).Score;
        var rows = Enumerable.Range(0, 24).ToArray();
        float[][] alone;
        using (var engine = mlContext.Model.CreatePredictionEngine<ImageRow, EnginePrediction>(model, new PredictionEngineOptions { OwnsTransformer = false }))
            alone = rows.Select(i => Predict(engine, i)).ToArray();
        var together = new float[6][][];
        Parallel.For(0, 6, new ParallelOptions { MaxDegreeOfParallelism = 6 }, t =>
        {
            using var engine = mlContext.Model.CreatePredictionEngine<ImageRow, EnginePrediction>(model,
                new PredictionEngineOptions { OwnsTransformer = false });
            together[t] = rows.Select(i => Predict(engine, (i + 5 * t) % rows.Length)).ToArray();
        });
        for (int t = 0; t < 6; t++)
            for (int j = 0; j < rows.Length; j++)
                CollectionAssert.AreEqual(alone[(j + 5 * t) % rows.Length], together[t][j], $"thread {t}, image {(j + 5 * t) % rows.Length}");
    }

    [TestMethod]
    public void APredictionEngineAgreesWithBatchedScoring()
    {
        var batched = model.Transform(validationData).GetColumn<VBuffer<float>>("Score").Take(3).Select(v => v.DenseValues().ToArray()).ToList();
        // ML.NET's engines own their transformer by default (disposing one disposes the model); this one borrows it.
        using var engine = mlContext.Model.CreatePredictionEngine<ImageRow, EnginePrediction>(model, new PredictionEngineOptions { OwnsTransformer = false });
        for (int i = 0; i < 3; i++)
        {
            var single = engine.Predict(validationRows[i]).Score;
            Assert.AreEqual(10, single.Length);
            for (int c = 0; c < 10; c++) Assert.AreEqual(batched[i][c], single[c], 1e-4, $"image {i}, class {c}");
            Assert.AreEqual(Array.IndexOf(single, single.Max()) + 1, (int)engine.Predict(validationRows[i]).PredictedLabel);
        }
        engine.Dispose();
        // Disposing a borrowing engine leaves the model usable.
        var after = model.Transform(validationData).GetColumn<VBuffer<float>>("Score").Take(3).Select(v => v.DenseValues().ToArray()).ToList();
        for (int i = 0; i < 3; i++) CollectionAssert.AreEqual(batched[i], after[i], $"image {i} after the engine was disposed");
    }

    public sealed class EnginePrediction
    {
        public float[] Score { get; set; } = Array.Empty<float>();
        public uint PredictedLabel { get; set; }
    }

    [TestMethod]
    public void PixelVectorsFromExtractPixelsAndNonKeyLabelsAreAccepted()
    {
        var context = new MLContext(1);
        var rows = ImageFolderSample.ListImages(ImageFolderFixture.Train).Where((_, i) => i % 10 == 0).ToList();
        var data = context.Data.LoadFromEnumerable(rows);
        var pipeline = context.Transforms.LoadImages("Image", "", nameof(ImageRow.ImagePath))
            .Append(context.Transforms.ResizeImages("Image", 32, 32))
            .Append(context.Transforms.ExtractPixels("Pixels", "Image"))
            .Append(context.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
            {
                ImageColumnName = "Pixels", Architecture = "resnet8", K = 2, Epochs = 1, BatchSize = 32,
            }));
        var fitted = pipeline.Fit(data);   // the label is a plain string here: mapped to a key by value
        var scored = fitted.Transform(data);
        Assert.AreEqual(rows.Count, scored.GetColumn<VBuffer<float>>("Score").Count());
        var keyValues = default(VBuffer<ReadOnlyMemory<char>>);
        scored.Schema["PredictedLabel"].GetKeyValues(ref keyValues);
        CollectionAssert.AreEqual(rows.Select(r => r.Label).Distinct().OrderBy(l => l, StringComparer.Ordinal).ToArray(),
            keyValues.DenseValues().Select(v => v.ToString()).ToArray());
    }

    [TestMethod]
    public void AMissingColumnIsAnErrorNamingIt()
    {
        var prepared = Preprocessing(mlContext).Fit(trainData).Transform(trainData);
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() =>
            mlContext.MulticlassClassification.Trainers.ManImageClassification(
                new ManImageClassificationTrainer.Options { ImageColumnName = "Picture" }).Fit(prepared));
        StringAssert.Contains(e.Message, "'Picture'");
        var l = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() =>
            mlContext.MulticlassClassification.Trainers.ManImageClassification(
                new ManImageClassificationTrainer.Options { LabelColumnName = "Class" }).Fit(prepared));
        StringAssert.Contains(l.Message, "'Class'");
    }

    private sealed class TextImage { public string Image { get; set; } = ""; public string Label { get; set; } = ""; }

    private sealed class ShortVector
    {
        [VectorType(100)] public float[] Image { get; set; } = new float[100];
        public string Label { get; set; } = "";
    }

    [TestMethod]
    public void AWrongColumnTypeOrVectorLengthIsAnErrorNamingTheColumn()
    {
        var text = mlContext.Data.LoadFromEnumerable(new[] { new TextImage { Image = "x", Label = "a" }, new TextImage { Image = "y", Label = "b" } });
        var e = Assert.ThrowsExactly<ArgumentException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(SmallOptions(1)).Fit(text));
        StringAssert.Contains(e.Message, "Image column 'Image'");
        var shortVectors = mlContext.Data.LoadFromEnumerable(new[] { new ShortVector { Label = "a" }, new ShortVector { Label = "b" } });
        var v = Assert.ThrowsExactly<ArgumentException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(SmallOptions(1))
            .Fit(shortVectors));
        StringAssert.Contains(v.Message, "'Image'");
        StringAssert.Contains(v.Message, "3072");
    }

    [TestMethod]
    public void AnUndecodableImageIsAnErrorNamingColumnAndRow()
    {
        var broken = Path.Combine(folder, "broken");
        Directory.CreateDirectory(Path.Combine(broken, "cat"));
        Directory.CreateDirectory(Path.Combine(broken, "dog"));
        File.Copy(Directory.GetFiles(Path.Combine(ImageFolderFixture.Train, "cat"))[0], Path.Combine(broken, "cat", "a.png"));
        File.Copy(Directory.GetFiles(Path.Combine(ImageFolderFixture.Train, "dog"))[0], Path.Combine(broken, "dog", "b.png"));
        File.WriteAllText(Path.Combine(broken, "dog", "c.png"), "this is not an image");
        var rows = mlContext.Data.LoadFromEnumerable(ImageFolderSample.ListImages(broken));

        // Encoded bytes (LoadRawImageBytes) and MLImage (LoadImages) alike; a batch within the three rows, so that the
        // images are read.
        var options = SmallOptions(1);
        options.BatchSize = 2;
        var raw = mlContext.Transforms.Conversion.MapValueToKey("Label")
            .Append(mlContext.Transforms.LoadRawImageBytes("Image", "", nameof(ImageRow.ImagePath)))
            .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(options));
        var e = Assert.ThrowsExactly<InvalidDataException>(() => raw.Fit(rows));
        StringAssert.Contains(e.Message, "Image column 'Image', row 2");
        var loaded = Preprocessing(mlContext).Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(options));
        var l = Assert.ThrowsExactly<InvalidDataException>(() => loaded.Fit(rows));
        StringAssert.Contains(l.Message, "Image column 'Image', row 2");
        // The file it came from, read from the path column the pipeline holds.
        var path = Path.Combine(broken, "dog", "c.png");
        StringAssert.Contains(e.Message, $"(ImagePath = '{path}')");
        StringAssert.Contains(l.Message, $"(ImagePath = '{path}')");
    }

    [TestMethod]
    public void EveryRuleMixSplitAndHeadOptionReachesThePlan()
    {
        var trainers = mlContext.MulticlassClassification.Trainers;
        var infoPro = trainers.ManImageClassification(new ManImageClassificationTrainer.Options
        {
            Architecture = "resnet32", K = 4, Rule = Local.LearningRule.InfoPro, ManMix = Local.ManMix.Learnable,
            SplitTable = Local.SplitTable.InfoPro,
            RuleSettings = new Local.RuleSettings
            {
                InfoPro = new Local.InfoProSettings
                {
                    Classifier = Local.AuxClassifierConfig.C1F1, LossMode = Local.InfoProLossMode.CrossEntropy,
                    Lambdas = new Local.InfoProLambdas(5, 0.5, 1, 0.5), Schedule = Local.LambdaSchedule.ModuleIndex,
                },
            },
        }).ResolvePlan(10);
        Assert.AreEqual(Local.LearningRule.InfoPro, infoPro.Rule);
        Assert.AreEqual(Local.ManMix.Learnable, infoPro.Man!.Mix);
        Assert.AreEqual("infopro", infoPro.SplitTable);
        Assert.IsTrue(infoPro.Heads.All(h => h.Head == "1c1f" && h.Loss == "ce"), string.Join(", ", infoPro.Heads.Select(h => $"{h.Head}/{h.Loss}")));
        Assert.AreEqual(5, infoPro.Heads[0].ReconstructionWeight);   // λ by module index: (5, 0.5) on the first head, (1, 0.5) on the last
        Assert.AreEqual(1.0, infoPro.Heads[^1].ReconstructionWeight!.Value, 1e-12);
        var predSim = trainers.ManImageClassification(
            new ManImageClassificationTrainer.Options { Architecture = "resnet8", K = 2, Rule = Local.LearningRule.PredSim, UseMan = false })
            .ResolvePlan(10);
        Assert.AreEqual(Local.LearningRule.PredSim, predSim.Rule);
        Assert.IsNull(predSim.Man);
        // Combinations are rejected with the command line's messages: at construction, or where the network decides, by ResolvePlan.
        var mix = Assert.ThrowsExactly<InvalidOptionException>(() => trainers.ManImageClassification(new ManImageClassificationTrainer.Options
        {
            ManMix = Local.ManMix.Learnable, ManAblation = Local.ManAblation.EmaOnly,
        }));
        StringAssert.Contains(mix.Message, "both");
        var k = Assert.ThrowsExactly<InvalidOptionException>(() => trainers.ManImageClassification(new ManImageClassificationTrainer.Options
        {
            Architecture = "resnet8", K = 40,
        }).ResolvePlan(10));
        Assert.AreEqual("K", k.Option, k.Message);
    }

    [TestMethod]
    public void InfoProTrainsThroughMLNet()
    {
        var pipeline = Preprocessing(mlContext)
            .Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(new ManImageClassificationTrainer.Options
            {
                Architecture = "resnet8", K = 2, Rule = Local.LearningRule.InfoPro, Epochs = 1, BatchSize = 64, Seed = 1,
            }));
        var trained = pipeline.Fit(trainData);
        var man = trained.LastTransformer;
        Assert.IsNotNull(man);
        StringAssert.StartsWith(man.TrainedWith, "resnet8 infopro+man K=2");
        var metrics = mlContext.MulticlassClassification.Evaluate(trained.Transform(validationData));
        Assert.IsTrue(metrics.MacroAccuracy >= 0 && metrics.LogLoss > 0 && double.IsFinite(metrics.LogLoss), $"log-loss {metrics.LogLoss}");
    }

    [TestMethod]
    public void AValidationFractionIsHeldOutAndScoredEveryEpoch()
    {
        var epochs = new List<Training.EpochMetrics>();
        var options = SmallOptions(1);
        options.ValidationSetFraction = 0.25;
        options.MetricsCallback = epochs.Add;
        Preprocessing(mlContext).Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(options)).Fit(trainData);
        Assert.HasCount(1, epochs);
        Assert.IsNotNull(epochs[0].ValAccuracy, "the held-out rows were not scored");
        int rows = ImageFolderSample.ListImages(ImageFolderFixture.Train).Count;
        // Scored on round(0.25 · rows) images: the accuracy is a multiple of 1 / that count.
        double held = Math.Round(0.25 * rows);
        Assert.AreEqual(0, epochs[0].ValAccuracy!.Value * held % 1, 1e-6, $"validation accuracy {epochs[0].ValAccuracy} is not k / {held}");
        var both = SmallOptions(1);
        both.ValidationSetFraction = 0.1;
        both.ValidationSet = validationData;
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(both));
        Assert.AreEqual("ValidationSetFraction", e.Option);
        var outOfRange = SmallOptions(1);
        outOfRange.ValidationSetFraction = 1;
        Assert.ThrowsExactly<InvalidOptionException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(outOfRange));
    }

    [TestMethod]
    public void NormalisationIsMeasuredOnTheTrainingImagesOrTakenAsGiven()
    {
        // The model trained in ClassInitialize measured it: recomputed here from the files, in float64 (the sample's
        // images are 32×32 already, fewer than NormalizationSampleSize, so every pixel of every training image counts).
        var sum = new double[3];
        var squares = new double[3];
        long pixels = 0;
        foreach (var row in ImageFolderSample.ListImages(ImageFolderFixture.Train))
        {
            using var image = MLImage.CreateFromFile(row.ImagePath);
            Assert.AreEqual(32, image.Width);
            var bytes = image.Pixels;
            bool bgra = image.PixelFormat == MLPixelFormat.Bgra32;
            for (int i = 0; i < image.Width * image.Height; i++)
                for (int c = 0; c < 3; c++)
                {
                    double v = bytes[i * 4 + (bgra ? 2 - c : c)] / 255.0;
                    sum[c] += v;
                    squares[c] += v * v;
                }
            pixels += image.Width * image.Height;
        }
        Assert.IsLessThan(ManImageClassificationTrainer.NormalizationSampleSize, (int)(pixels / 1024));
        var measured = ((TransformerChain<ManImageClassificationTransformer>)model).LastTransformer.Normalization;
        Assert.IsNotNull(measured);
        for (int c = 0; c < 3; c++)
        {
            double mean = sum[c] / pixels, std = Math.Sqrt(squares[c] / pixels - mean * mean);
            Assert.AreEqual(mean, measured.Mean[c], 1e-5, $"mean of channel {c}");
            Assert.AreEqual(std, measured.Std[c], 1e-5, $"std of channel {c}");
        }
        // Given: used as is, and stored with the model.
        var options = SmallOptions(1);
        options.Normalization = Data.Normalization.Cifar;
        var given = Preprocessing(mlContext).Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(options)).Fit(trainData);
        CollectionAssert.AreEqual(Data.Normalization.Cifar.Mean, given.LastTransformer.Normalization.Mean);
        CollectionAssert.AreEqual(Data.Normalization.Cifar.Std, given.LastTransformer.Normalization.Std);
        var bad = SmallOptions(1);
        bad.Normalization = new Data.Normalization(new[] { 0.5f, 0.5f, 0.5f }, new[] { 0.2f, 0f, 0.2f });
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(bad));
        Assert.AreEqual("Normalization", e.Option);
    }

    [TestMethod]
    public void TrainingContinuesFromAGivenModel()
    {
        var preprocess = Preprocessing(mlContext).Fit(trainData);
        using var initial = mlContext.MulticlassClassification.Trainers.ManImageClassification(SmallOptions(1)).Fit(preprocess.Transform(trainData));
        var before = initial.Network.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach().clone());
        var options = SmallOptions(1);
        options.LearningRate = 1e-9; // so small that the weights must stay where the initial model left them
        var further = mlContext.MulticlassClassification.Trainers.ManImageClassification(options)
            .Fit(preprocess.Transform(trainData), initial);
        foreach (var (name, p) in further.Network.named_parameters())
            Assert.IsLessThan(1e-5, (p.detach() - before[name]).abs().max().item<float>(), $"{name} moved away from the initial model");
        CollectionAssert.AreEqual(initial.Normalization.Mean, further.Normalization.Mean, "the initial model's normalisation is kept");
        // Without the initial model the same options start from the seeded initialisation, far from it.
        var fresh = mlContext.MulticlassClassification.Trainers.ManImageClassification(options).Fit(preprocess.Transform(trainData));
        Assert.IsGreaterThan(1e-2, fresh.Network.named_parameters().Max(p => (p.parameter.detach() - before[p.name]).abs().max().item<float>()));
        // Another architecture is refused, naming both.
        var other = SmallOptions(1);
        other.Architecture = "resnet14";
        var e = Assert.ThrowsExactly<ArgumentException>(() => mlContext.MulticlassClassification.Trainers.ManImageClassification(other)
            .Fit(preprocess.Transform(trainData), initial));
        StringAssert.Contains(e.Message, "resnet8");
        StringAssert.Contains(e.Message, "resnet14");
        foreach (var t in before.Values) t.Dispose();
    }

    [TestMethod]
    public void AnEmptyDataViewIsReportedAsEmpty()
    {
        var empty = mlContext.Data.LoadFromEnumerable(new List<ImageRow>());
        var pipeline = Preprocessing(mlContext).Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(SmallOptions(1)));
        var e = Assert.ThrowsExactly<ArgumentException>(() => pipeline.Fit(empty));
        Assert.AreEqual("The training data holds no rows; at least 2 are needed.", e.Message);
    }

    [TestMethod]
    public void CancellationStopsTrainingWithinOneBatch()
    {
        using var cancel = new CancellationTokenSource();
        int lastBatch = 0, batchAtCancel = 0;
        var options = SmallOptions(5);
        options.BatchSize = 32;
        options.CancellationToken = cancel.Token;
        options.ProgressCallback = p =>
        {
            lastBatch = (p.Epoch - 1) * p.BatchesPerEpoch + p.Batch;
            if (lastBatch == 3) { batchAtCancel = lastBatch; cancel.Cancel(); }
        };
        var pipeline = Preprocessing(mlContext).Append(mlContext.MulticlassClassification.Trainers.ManImageClassification(options));
        Assert.ThrowsExactly<OperationCanceledException>(() => pipeline.Fit(trainData));
        Assert.AreEqual(3, batchAtCancel);
        Assert.AreEqual(3, lastBatch, "training ran on after cancellation");
    }

    [TestMethod]
    public void MLContextsOwnCancellationStopsTrainingToo()
    {
        // ML.NET keeps MLContext.CancelExecution internal (its AutoML calls it); Man.ML honours it between batches.
        var context = new MLContext(2);
        var cancelExecution = typeof(MLContext).GetMethods(System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)
            .Single(m => m.Name.EndsWith("CancelExecution") && m.GetParameters().Length == 0);
        int lastBatch = 0;
        var options = SmallOptions(5);
        options.BatchSize = 32;
        options.ProgressCallback = p =>
        {
            lastBatch = (p.Epoch - 1) * p.BatchesPerEpoch + p.Batch;
            if (lastBatch == 2) cancelExecution.Invoke(context, null);
        };
        var pipeline = Preprocessing(context).Append(context.MulticlassClassification.Trainers.ManImageClassification(options));
        Assert.ThrowsExactly<OperationCanceledException>(() => pipeline.Fit(trainData));
        Assert.AreEqual(2, lastBatch);
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void FitChecksTheBackendOnceAndTheCheckCanBeTurnedOff()
    {
        foreach (bool check in new[] { true, false })
        {
            var context = new MLContext(0);
            var messages = new List<string>();
            context.Log += (_, e) => { lock (messages) messages.Add(e.Message); };
            var options = SmallOptions(epochs: 1);
            options.CheckBackend = check;
            using var _ = (IDisposable)Preprocessing(context).Append(context.MulticlassClassification.Trainers.ManImageClassification(options))
                .Fit(context.Data.LoadFromEnumerable(ImageFolderSample.ListImages(ImageFolderFixture.Train))).LastTransformer;
            Assert.AreEqual(check, messages.Any(m => m.Contains("Man.ML backend check:") && m.Contains("convolution shapes correct against float64")),
                $"CheckBackend = {check}");
        }
    }
}
