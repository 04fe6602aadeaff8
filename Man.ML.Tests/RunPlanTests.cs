using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.Json.Nodes;
using Man.ML.Local;
using Man.ML.Models;
using Man.ML.Training;
using static TorchSharp.torch;
using Man.ML.Backend;

namespace Man.ML.Tests;

/// <summary>The typed choices, the resolved run (RunPlan) and the checkpoint fingerprint built on it.</summary>
[TestClass]
public sealed class RunPlanTests
{
    private static TrainingOptions Tiny(int k = 2) => new() { Architecture = "resnet8", K = k, Epochs = 2, BatchSize = 32, Seed = 5, LearningRate = 0.05 };

    [TestMethod]
    public void ATrainedModelSaysHowManyEpochsRanAndWhoseWeightsItHolds()
    {
        var plan = RunPlan.Resolve(Tiny() with { Epochs = 4, Man = new MomentumOptions() }, 10, 32);
        Assert.AreEqual("resnet8 dgl+man K=2, 4 epochs, seed 5", plan.TrainedWith);
        Assert.AreEqual(plan.TrainedWith, plan.DescribeTrained(4, 4));
        Assert.AreEqual("resnet8 dgl+man K=2, 4 epochs, weights of epoch 3, seed 5", plan.DescribeTrained(4, 3));
        Assert.AreEqual("resnet8 dgl+man K=2, 2 of 4 epochs run, weights of epoch 1, seed 5", plan.DescribeTrained(2, 1));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => plan.DescribeTrained(5, 1));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => plan.DescribeTrained(2, 3));
    }

    [TestMethod]
    public void ChoiceNamesParseInAnyCaseAndAnUnknownNameListsTheKnownOnes()
    {
        foreach (var text in new[] { "InfoPro", "infopro", "INFOPRO", " infopro " })
            Assert.AreEqual(LearningRule.InfoPro, Choices.Parse<LearningRule>(text, "--rule"), text);
        Assert.AreEqual(LearningRule.EndToEnd, Choices.Parse<LearningRule>("E2E", "--rule"));
        Assert.AreEqual(ManAblation.EmaOnly, Choices.Parse<ManAblation>("EMA-only", "--man-ablation"));
        Assert.AreEqual("ema-only", Choices.Name(ManAblation.EmaOnly));
        Assert.AreEqual("skip-step", Choices.Name(NonFinitePolicy.SkipStep));
        var e = Assert.ThrowsExactly<InvalidOptionException>(() => Choices.Parse<LearningRule>("infopr", "--rule"));
        Assert.AreEqual("--rule 'infopr' is not one of: e2e, dgl, infopro, predsim.", e.Message);
        Assert.AreEqual("--rule", e.Option);
        var split = Assert.ThrowsExactly<InvalidOptionException>(() => Choices.Parse<SplitTable>("mann", "--split"));
        StringAssert.Contains(split.Message, "man, manpp, infopro, dgl, balanced");
    }

    [TestMethod]
    public void EveryChoiceEnumNamesEachMemberOnceAndRoundTrips()
    {
        var enums = typeof(Choices).Assembly.GetTypes()
            .Where(t => t.IsEnum && t.GetFields(BindingFlags.Public | BindingFlags.Static).Any(f => f.IsDefined(typeof(ChoiceNameAttribute))))
            .ToList();
        Assert.IsTrue(enums.Count >= 11, $"only {enums.Count} enums carry choice names");
        foreach (var type in enums)
        {
            var fields = type.GetFields(BindingFlags.Public | BindingFlags.Static);
            var names = fields.Select(f => f.GetCustomAttribute<ChoiceNameAttribute>()?.Name).ToList();
            Assert.IsFalse(names.Contains(null), $"{type.Name}: a member has no [ChoiceName]");
            Assert.AreEqual(names.Count, names.Distinct(StringComparer.OrdinalIgnoreCase).Count(), $"{type.Name}: a name is used twice");
            var parse = typeof(Choices).GetMethod(nameof(Choices.Parse))!.MakeGenericMethod(type);
            var name = typeof(Choices).GetMethod(nameof(Choices.Name))!.MakeGenericMethod(type);
            foreach (var f in fields)
            {
                var value = f.GetValue(null)!;
                var text = (string)name.Invoke(null, new[] { value })!;
                Assert.AreEqual(value, parse.Invoke(null, new object[] { text.ToUpperInvariant(), "option" }), $"{type.Name}.{f.Name}");
            }
        }
    }

    [TestMethod]
    public void AMisspeltArchitectureOrDatasetListsTheKnownNames()
    {
        var arch = Assert.ThrowsExactly<InvalidOptionException>(() => (Tiny() with { Architecture = "resnet33" }).Validate());
        StringAssert.Contains(arch.Message, "resnet<6n+2>");
        StringAssert.Contains(arch.Message, "resnext101_32x8d");
        Assert.AreEqual("Architecture", arch.Option);
        StringAssert.Contains(Assert.ThrowsExactly<InvalidOptionException>(() => Data.DatasetKind.Get("cifar100")).Message, "cifar10, svhn, stl10, imagenet");
        StringAssert.Contains(Assert.ThrowsExactly<InvalidOptionException>(() => (Tiny() with { Device = "tpu" }).Validate()).Message, "cpu, cuda or cuda:N");
    }

    [TestMethod]
    public void ANetworkIsConstructedOncePerRun()
    {
        using var train = TestSupport.SampleImages(0, 64);
        foreach (var options in new[]
        {
            Tiny() with { Epochs = 1 },
            // balanced split: the boundary costs build heads on the side, never a second network
            Tiny() with { Epochs = 1, Rule = LearningRule.InfoPro, SplitTable = SplitTable.Balanced },
        })
        {
            // What one seeded initialisation of the network leaves in the random generator.
            manual_seed(options.Seed);
            using (Architectures.Create(options.Architecture, 10, 32)) { }
            using var once = get_rng_state();

            var trainer = new Trainer(options) { CheckBackend = false };
            var plan = trainer.Prepare(10, 32);                      // what a front end shows before training
            Assert.IsTrue(once.eq(trainer.PreparedGenerator!).all().item<bool>(), $"{options.Rule}: Prepare initialises one network and nothing else");
            var network = trainer.PreparedNetwork;
            Assert.IsNotNull(network, "Prepare builds the network");
            Assert.AreSame(plan, trainer.Prepare(10, 32));
            Assert.AreSame(network, trainer.PreparedNetwork, "preparing again builds nothing");
            var result = trainer.Train(train, null);
            Assert.AreSame(network, result.Network, $"{options.Rule} K={options.K}: the run trains the network Prepare built, not another");
            Assert.AreSame(plan, result.Plan);
            result.Network.Dispose();
        }
    }

    [TestMethod]
    public void ThePlanStatesTheResolvedRun()
    {
        var plan = RunPlan.Resolve(Tiny() with { Rule = LearningRule.InfoPro, Man = new MomentumOptions() }, 10, 32);
        Assert.AreEqual(2, plan.K);
        Assert.AreEqual(plan.Units.Count - 1, plan.SegmentEnds[^1]);
        Assert.AreEqual(1, plan.Heads.Count);
        Assert.AreEqual(5, plan.Heads[0].ReconstructionWeight);       // K = 2: λ's first pair on the only head
        Assert.AreEqual(0.5, plan.Heads[0].ClassificationWeight);
        Assert.AreEqual("2c2f", plan.Heads[0].Head);                  // InfoPro + MAN: MAN's classifier and cross-entropy
        Assert.AreEqual("ce", plan.Heads[0].Loss);
        Assert.AreEqual(InfoProRule.ManLambdas, plan.InfoPro!.Lambdas);
        var json = plan.ToJson();
        Assert.AreEqual("infopro", json["rule"]!.GetValue<string>());
        Assert.AreEqual("stage", json["infopro"]!["lambda_schedule"]!.GetValue<string>());
        Assert.AreEqual(0.05, json["lr"]!.GetValue<double>());
        Assert.AreEqual("sum", json["man_mix"]!.GetValue<string>());
        Assert.IsNull(json["dgl_head"]);
        Assert.AreEqual(plan.BackboneParameters, json["parameters_backbone"]!.GetValue<long>());
    }

    [TestMethod]
    public void ThePlanJsonDoesNotDependOnTheCulture()
    {
        var previous = CultureInfo.CurrentCulture;
        try
        {
            CultureInfo.CurrentCulture = CultureInfo.GetCultureInfo("de-DE"); // decimal comma
            var german = RunPlan.Resolve(Tiny(), 10, 32).ToJson().ToJsonString();
            CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
            var invariant = RunPlan.Resolve(Tiny(), 10, 32).ToJson().ToJsonString();
            Assert.AreEqual(invariant, german);
            StringAssert.Contains(german, "\"lr\":0.05");
        }
        finally { CultureInfo.CurrentCulture = previous; }
    }

    [TestMethod]
    public void PlansCompareByValueNotByHowTheyAreWritten()
    {
        var a = RunPlan.Resolve(Tiny(), 10, 32).ToJson();
        // The same plan with its keys in another order and its numbers written another way (1E-4 for 0.0001).
        var b = new JsonObject(a.Reverse().Select(p => KeyValuePair.Create(p.Key, p.Value is null ? null : JsonNode.Parse(p.Value.ToJsonString()))));
        b["weight_decay"] = JsonNode.Parse("1E-4");
        Assert.AreEqual(0, RunPlan.Differences(a, b).Count);
        b["k"] = 3;
        b["device"] = "cuda";
        var differences = RunPlan.Differences(a, b, RunPlan.KeysFreeOnResume);
        Assert.AreEqual(1, differences.Count);
        Assert.AreEqual(("k", "2", "3"), differences[0]);
    }

    [TestMethod]
    public void ACheckpointResumesUnderAnotherCultureAndWhateverWroteItsHeader()
    {
        var dir = TestSupport.NewTempFolder();
        var previous = CultureInfo.CurrentCulture;
        try
        {
            using var train = TestSupport.SampleImages(0, 64);
            var path = Path.Combine(dir, "run.ckpt");
            CultureInfo.CurrentCulture = CultureInfo.GetCultureInfo("de-DE");
            var first = new Trainer(Tiny() with { Epochs = 1 }) { CheckpointPath = path, CheckBackend = false }.Train(train, null);
            first.Network.Dispose();
            CultureInfo.CurrentCulture = CultureInfo.GetCultureInfo("en-US");
            var resumed = new Trainer(Tiny() with { Epochs = 1 }) { ResumeFrom = path, CheckBackend = false }.Train(train, null);
            Assert.AreEqual(1, resumed.Epochs.Count);
            resumed.Network.Dispose();

            // The header rewritten as another writer might (keys reversed, numbers in exponent form): still the same plan.
            var rewritten = Path.Combine(dir, "rewritten.ckpt");
            RewriteHeader(path, rewritten, header =>
            {
                var plan = header["plan"]!.AsObject();
                var reordered = new JsonObject(plan.Reverse().Select(p => KeyValuePair.Create(p.Key,
                    p.Value is null ? null : JsonNode.Parse(p.Value.ToJsonString()))));
                reordered["lr"] = JsonNode.Parse("5E-2");
                header["plan"] = reordered;
            }, version: 2);
            var again = new Trainer(Tiny() with { Epochs = 1 }) { ResumeFrom = rewritten, CheckBackend = false }.Train(train, null);
            again.Network.Dispose();

            // A checkpoint of format version 1 (a configuration string instead of a plan) still resumes.
            var legacy = Path.Combine(dir, "v1.ckpt");
            RewriteHeader(path, legacy, header =>
            {
                header.Remove("plan");
                header["configuration"] = TrainingCheckpoint.LegacyFingerprint(Tiny() with { Epochs = 1 });
            }, version: 1);
            var old = new Trainer(Tiny() with { Epochs = 1 }) { ResumeFrom = legacy, CheckBackend = false }.Train(train, null);
            old.Network.Dispose();
        }
        finally
        {
            CultureInfo.CurrentCulture = previous;
            Directory.Delete(dir, true);
        }
    }

    // Copies a run checkpoint with its JSON header edited: magic, version, header, then the payload unchanged, without the
    // checksum trailer (versions 1 and 2 have none).
    private static void RewriteHeader(string from, string to, Action<JsonObject> edit, int version)
    {
        using var input = new BinaryReader(File.OpenRead(from), Encoding.UTF8);
        var magic = input.ReadBytes("MANML-RUN\n".Length);
        input.ReadInt32();
        var header = JsonNode.Parse(input.ReadString())!.AsObject();
        edit(header);
        using var output = new BinaryWriter(File.Create(to), Encoding.UTF8);
        output.Write(magic);
        output.Write(version);
        output.Write(header.ToJsonString());
        var payload = new byte[input.BaseStream.Length - input.BaseStream.Position - CheckpointFormat.TrailerLength];
        input.BaseStream.ReadExactly(payload);
        output.Write(payload);
    }

    [TestMethod]
    public void CheckpointsRoundTripThroughStreams()
    {
        using var train = TestSupport.SampleImages(0, 64);
        var trainer = new Trainer(Tiny() with { Epochs = 1 }) { CheckBackend = false };
        using var local = trainer.CreateLocalTrainer(10, 32);
        using var memory = new MemoryStream();
        TrainingCheckpoint.Save(memory, trainer.Plan!, local, Array.Empty<EpochMetrics>());
        memory.Position = 0;
        var other = new Trainer(Tiny() with { Epochs = 1 }) { CheckBackend = false };
        using var restored = other.CreateLocalTrainer(10, 32);
        TrainingCheckpoint.Restore(memory, other.Plan!, restored, "in-memory checkpoint");
        using var model = new MemoryStream();
        ModelCheckpoint.Save(model, local.Network, new CheckpointInfo { Architecture = "resnet8", Classes = 10, ImageSize = 32 });
        model.Position = 0;
        var (network, info) = ModelCheckpoint.Load(model, "in-memory model");
        using (network) Assert.AreEqual(local.Network.ParameterCount(), network.ParameterCount());
        Assert.AreEqual("resnet8", info.Architecture);
        var foreign = new MemoryStream(Encoding.UTF8.GetBytes("not a checkpoint at all"));
        StringAssert.Contains(Assert.ThrowsExactly<InvalidDataException>(() => ModelCheckpoint.Load(foreign, "The upload")).Message,
            "The upload is not a Man.ML checkpoint");
    }

    [TestMethod]
    public void TheNonFiniteCheckReadsTheDeviceOncePerStep()
    {
        using var data = TestSupport.SampleImages(0, 32);
        var trainer = new Trainer(Tiny(k: 4) with { Man = new MomentumOptions() }) { CheckBackend = false };
        using var local = trainer.CreateLocalTrainer(10, 32);
        using var x = Data.Normalization.Cifar.Apply(data.Images.to_type(ScalarType.Float32).DividedBy(255));
        using (NewDisposeScope()) Assert.IsFalse(local.Step(x, data.Labels).Skipped);

        // The step's gradients, by segment: each segment's units and auxiliary head (K = 4 with MAN: dozens of tensors).
        var parameters = Enumerable.Range(0, local.Split.K).SelectMany(j =>
            Enumerable.Range(local.Split.Segments[j].Start, local.Split.Segments[j].End - local.Split.Segments[j].Start)
                .SelectMany(u => local.Network.Units[u].parameters())
                .Concat(j < local.Split.K - 1 ? local.Heads[j].parameters() : local.Network.Head.parameters())
                .Select(p => (Segment: j, Parameter: p))).ToList();
        Assert.IsTrue(parameters.Count > 24 && parameters.All(p => p.Parameter.grad is not null), $"{parameters.Count} parameters");
        int reads = 0;
        bool Read(Tensor flag) { reads++; return FiniteGradients.ReadFromDevice(flag); }
        Assert.IsNull(FiniteGradients.FirstNonFinite(parameters, Read));
        Assert.AreEqual(1, reads, "one read from the device for a healthy step, whatever the number of gradients");

        // A bad gradient is found segment by segment (reads only then), and the step's own check names its segment.
        using (no_grad()) parameters.First(p => p.Segment == 2).Parameter.grad!.view(-1)[0] = tensor(float.NaN);
        reads = 0;
        Assert.AreEqual(2, FiniteGradients.FirstNonFinite(parameters, Read));
        Assert.IsTrue(reads > 1);
        Assert.AreEqual(2, Assert.ThrowsExactly<NonFiniteException>(local.CheckGradients).Segment);
    }
}
