// The epoch loop around LocalTrainer: seeding, shuffling, augmentation, the learning-rate schedule, evaluation,
// progress events and cancellation (honoured between batches).
using System.Diagnostics;
using Man.ML.Backend;
using Man.ML.Data;
using Man.ML.Local;
using Man.ML.Models;

namespace Man.ML.Training;

/// <summary>Training stopped at a NaN or infinite loss or gradient; the message names the segment, the step and the last good checkpoint.</summary>
public sealed class NonFiniteTrainingException(string message, Exception inner) : Exception(message, inner);

/// <summary>A finished run: the trained backbone and its figures.</summary>
/// <param name="Network">The trained backbone (MAN's copies and the auxiliary heads are gone).</param>
/// <param name="Split">How it was split.</param>
/// <param name="Epochs">Every epoch's figures.</param>
/// <param name="Final">The returned model's figures.</param>
/// <param name="Plan">The run as it happened.</param>
public sealed record TrainingResult(UnitChainNetwork Network, SplitPlan Split, IReadOnlyList<EpochMetrics> Epochs,
    FinalMetrics Final, RunPlan Plan)
{
    /// <summary>
    /// What the returned model says of itself: the plan's description with the epochs run and, where early stopping
    /// returned another epoch's weights, that epoch (<see cref="RunPlan.DescribeTrained"/>).
    /// </summary>
    public string TrainedWith => Plan.DescribeTrained(Epochs.Count, Final.BestEpoch ?? Epochs.Count);
}

/// <summary>Trains networks by supervised local learning.</summary>
public sealed class Trainer
{
    /// <summary>The options.</summary>
    public TrainingOptions Options { get; }

    /// <summary>Raised after every mini-batch.</summary>
    public event Action<BatchProgress>? BatchCompleted;

    /// <summary>Raised after every epoch (with its evaluation).</summary>
    public event Action<EpochMetrics>? EpochCompleted;

    /// <summary>Raised after a run checkpoint is written, with its path and the epochs it holds.</summary>
    public event Action<string, int>? CheckpointWritten;

    /// <summary>
    /// Where run checkpoints are written (null: none). Written atomically, replacing the previous one. Before the first
    /// step its folder is checked for room (the checkpoint's size measured, twice when it is replaced): an
    /// <see cref="IOException"/> naming the folder when there is not.
    /// </summary>
    public string? CheckpointPath { get; init; }

    /// <summary>
    /// A folder for TensorBoard event files (null: none): each epoch's figures are written there as it ends
    /// (<see cref="TensorBoardLog"/>; in a data-parallel run by rank 0 only).
    /// </summary>
    public string? TensorBoardDirectory { get; init; }

    /// <summary>Write a run checkpoint every this many epochs (0: never; the last epoch always when a path is set).</summary>
    public int CheckpointEvery { get; init; }

    /// <summary>A run checkpoint to continue from (same configuration), or null.</summary>
    public string? ResumeFrom { get; init; }

    /// <summary>
    /// Stop once the validation figure has stalled and return the best epoch's weights (null: train every epoch and
    /// return the last). Needs validation data; not combined with <see cref="ResumeFrom"/> (the best weights of the
    /// epochs before the checkpoint are not in it).
    /// </summary>
    public EarlyStopping? EarlyStopping { get; init; }

    /// <summary>What to do with a NaN or infinite loss or gradient. Default: stop.</summary>
    public NonFinitePolicy OnNonFinite { get; init; } = NonFinitePolicy.Stop;

    /// <summary>
    /// Check, before the first step, that the backend computes every convolution of this configuration correctly
    /// (<see cref="BackendCheck"/>; shapes already checked in this process are not checked again). Default true.
    /// </summary>
    public bool CheckBackend { get; init; } = true;

    /// <summary>
    /// Bytes a front end writes beside <see cref="CheckpointPath"/> once the run is over (the model file), counted in the
    /// free-space check made before the first step. Default 0.
    /// </summary>
    internal long FinalOutputBytes { get; set; }

    /// <summary>The backend check of the last run (null when <see cref="CheckBackend"/> is off or no run started).</summary>
    internal BackendReport? BackendReport { get; private set; }

    /// <summary>Steps dropped so far for non-finite values (with <see cref="NonFinitePolicy.SkipStep"/>).</summary>
    public int SkippedSteps { get; private set; }

    /// <summary>Creates a trainer; the options are validated here, once.</summary>
    /// <exception cref="InvalidOptionException">An option, or a combination, is invalid.</exception>
    public Trainer(TrainingOptions options)
    {
        options.Validate();
        Options = options;
    }

    private RunPlan.Built? prepared;

    /// <summary>The plan of the run prepared or trained last (null before <see cref="Prepare"/> or a run).</summary>
    public RunPlan? Plan { get; private set; }

    /// <summary>
    /// Resolves the run for data of <paramref name="classes"/> classes at <paramref name="imageSize"/>: builds the
    /// (seeded) network once, splits it and describes every head. A following <c>Train</c> on such data trains that
    /// network, so a front end can show the plan, check free space and so on without building anything twice.
    /// libtorch's global generator is left as it was.
    /// </summary>
    /// <exception cref="InvalidOptionException">An option that needs the network is invalid (K beyond the units, a
    /// split table without an entry, InfoPro without reference λ).</exception>
    public RunPlan Prepare(int classes, int imageSize)
    {
        if (prepared is { } p && p.Plan.Classes == classes && p.Plan.ImageSize == imageSize) return p.Plan;
        ReleasePrepared();
        prepared = RunPlan.Build(Options, classes, imageSize);
        Plan = prepared.Plan;
        return Plan;
    }

    private void ReleasePrepared()
    {
        prepared?.Network.Dispose();
        prepared?.Dispose();
        prepared = null;
    }

    /// <summary>The network <see cref="Prepare"/> built, before a run takes it (null otherwise): a front end may set its
    /// weights here, for example to continue training a saved model; MAN's copies are made from it when the run starts.</summary>
    internal UnitChainNetwork? PreparedNetwork => prepared?.Network;

    /// <summary>The run's generator state after <see cref="Prepare"/> built its network (null otherwise).</summary>
    internal Tensor? PreparedGenerator => prepared?.Generator;

    /// <summary>
    /// The engine of the prepared run (auxiliary heads, MAN, optimizer, on the plan's device), built from what the plan
    /// resolved; the caller owns it. Heads and MAN's copies draw from the run's generator (seeded, continuing after the
    /// network), and libtorch's global generator is left as the caller had it.
    /// </summary>
    internal LocalTrainer CreateLocalTrainer(int classes, int imageSize)
    {
        Prepare(classes, imageSize);
        var built = prepared!;
        prepared = null; // the engine owns the network from here
        using (built)
        {
            using var callers = get_rng_state();
            set_rng_state(built.Generator);
            try
            {
                return new LocalTrainer(built.Network, built.Split, built.Rule, Options.Man, built.Optimizer, built.Device, built.HeadContexts,
                    built.Plan.Pipeline is { } pipeline ? PipelineLayoutOf(pipeline).SegmentDevices() : null)
                {
                    Precision = built.Plan.Precision,
                };
            }
            catch
            {
                built.Network.Dispose();
                throw;
            }
            finally
            {
                set_rng_state(callers);
            }
        }
    }

    // The engine's view of the plan's pipeline.
    internal static PipelineLayout PipelineLayoutOf(PipelinePlan plan) => new(
        plan.Stages.Select(s => (s.FirstSegment, s.LastSegment)).ToArray(), plan.Depth,
        plan.Stages.Select(s => Devices.Resolve(s.Device, nameof(TrainingOptions.StageDevices))).ToArray(), plan.ThreadsPerStage);

    /// <summary>Trains on <paramref name="train"/>, evaluating on <paramref name="validation"/> after every epoch and
    /// on each of <paramref name="tests"/> at the end.</summary>
    public TrainingResult Train(LabeledImages train, LabeledImages? validation,
        IReadOnlyList<(string Name, LabeledImages Data)>? tests = null, CancellationToken cancellation = default)
    {
        ITrainingSource Source(LabeledImages data) => new InMemorySource(data, Options.Augmentation, Options.Normalization);
        return Train(Source(train), validation is null ? null : Source(validation), tests?.Select(t => (t.Name, Source(t.Data))).ToList(),
            cancellation);
    }

    /// <summary>
    /// Trains on image files (the ImageNet layout, <see cref="ImageNetFolder"/>): random-resized crops of
    /// <see cref="TrainingOptions.ImageSize"/> (default 224) with flips, decoded ahead on
    /// <see cref="TrainingOptions.DataWorkers"/> background threads; evaluation resizes and centre-crops, and reports top-1
    /// and top-5 accuracy.
    /// </summary>
    public TrainingResult Train(ImageFileSet train, ImageFileSet? validation, CancellationToken cancellation = default)
    {
        var transform = ImageNetTransform.ForCrop(Options.ImageSize ?? 224) with
        {
            Normalization = Options.Normalization, MaxPixels = Options.MaxImagePixels,
        };
        return Train(new FileSource(train, transform, Options.DataWorkers),
            validation is null ? null : new FileSource(validation, transform, Options.DataWorkers), null, cancellation);
    }

    internal TrainingResult Train(ITrainingSource train, ITrainingSource? validation, IReadOnlyList<(string Name, ITrainingSource Data)>? tests,
        CancellationToken cancellation)
    {
        if (train.Count < 2)
            throw new InvalidOptionException("data", $"Training needs at least 2 images (got {train.Count}).");
        // Every batch would be the whole set, and the default learning rate (0.1·B/128) would scale with a batch never seen.
        if (Options.BatchSize > train.Count)
            throw new InvalidOptionException(nameof(TrainingOptions.BatchSize),
                $"The batch size {Options.BatchSize} is larger than the {train.Count} training images; give at most {train.Count}.");
        if (Options.Distributed != Distributed.DistributedMode.None && OnNonFinite == NonFinitePolicy.SkipStep)
            throw new InvalidOptionException(nameof(OnNonFinite),
                "A distributed run stops at a NaN or infinite value (every rank must take the same steps); skip-step is not available with it.");
        if (EarlyStopping is { } stopping)
        {
            stopping.Validate(nameof(EarlyStopping));
            if (validation is null) throw new InvalidOptionException(nameof(EarlyStopping), "Early stopping needs validation data to watch.");
            if (ResumeFrom is not null)
                throw new InvalidOptionException(nameof(EarlyStopping),
                    "Early stopping cannot continue a resumed run: the checkpoint does not hold the best epoch's weights.");
        }
        using var local = CreateLocalTrainer(train.ClassNames.Count, train.ImageSize);
        var plan = Plan!;
        if (plan.Distributed is { } job)
        {
            if ((long)Options.BatchSize * job.Ranks > train.Count)
                throw new InvalidOptionException(nameof(TrainingOptions.BatchSize),
                    $"The global batch ({job.Ranks} ranks × {Options.BatchSize}) is larger than the {train.Count} training images.");
            DataParallel.EnsureSamePlan(plan, Options.CollectiveTimeoutSeconds);
        }
        using var callers = get_rng_state();
        try
        {
            if (ResumeFrom is not null) TrainingCheckpoint.EnsureSameRun(ResumeFrom, plan); // before anything costly
            if (CheckpointPath is not null && (plan.Distributed?.WritesFiles ?? true)) EnsureRoomForCheckpoints(plan, local);
            // A wrong gradient stops the run here, with the layer, the shape and the remedy, not as a NaN hours later.
            if (CheckBackend) BackendReport = BackendCheck.EnsureCorrect(local);
            return Run(plan, local, train, validation, tests, local.Device, cancellation);
        }
        catch
        {
            local.Network.Dispose(); // a failed or cancelled run releases everything it held
            throw;
        }
        finally
        {
            set_rng_state(callers); // a resumed run restores its generator: the application's is given back
        }
    }

    // A run checkpoint is replaced atomically: while the next is written the previous one is still there, so a run that
    // writes more than one needs room for two; the model file comes after the last, beside one.
    private void EnsureRoomForCheckpoints(RunPlan plan, LocalTrainer local)
    {
        long checkpoint = OutputSpace.RunCheckpointBytes(plan, local) + OutputSpace.HeaderSlackBytes;
        bool several = CheckpointEvery > 0 && CheckpointEvery < Options.Epochs;
        long needed = Math.Max(several ? 2 * checkpoint : checkpoint, checkpoint + FinalOutputBytes);
        OutputSpace.Ensure(Path.GetDirectoryName(Path.GetFullPath(CheckpointPath!))!, needed,
            FormattableString.Invariant($"a run checkpoint of {checkpoint / 1048576.0:0.0} MiB{(several ? ", twice while it is replaced" : "")}") +
            (FinalOutputBytes > 0 ? FormattableString.Invariant($", and the model of {FinalOutputBytes / 1048576.0:0.0} MiB") : ""));
    }

    // A batch tensor on the first stage's device, owned by the pipeline (out of every dispose scope).
    private static Tensor Owned(Tensor t, Device device)
    {
        var moved = t.to(device);
        return (ReferenceEquals(moved, t) ? t.alias() : moved).DetachFromDisposeScope();
    }

    private TrainingResult Run(RunPlan runPlan, LocalTrainer local, ITrainingSource train, ITrainingSource? validation,
        IReadOnlyList<(string Name, ITrainingSource Data)>? tests, Device device, CancellationToken cancellation)
    {
        var (network, split) = (local.Network, local.Split);

        var job = runPlan.Distributed;
        bool stagesAsRanks = job?.StagesAsRanks == true; // a pipeline whose stages are the ranks: whole batches on every rank
        int ranks = stagesAsRanks ? 1 : job?.Ranks ?? 1, globalBatch = runPlan.GlobalBatchSize;
        int batches = (train.Count + globalBatch - 1) / globalBatch;
        // A last batch too small to give each rank's micro-batches 2 images would break batch norm: fold it into the
        // previous one (one image in one process).
        int remainder = train.Count % globalBatch;
        if (batches > 1 && remainder > 0 && remainder < 2 * ranks * Options.MicroBatches) batches--;
        var ranges = Enumerable.Range(0, batches)
            .Select(b => (b * globalBatch, b == batches - 1 ? train.Count : (b + 1) * globalBatch)).ToList();
        // A rank reads its shard of each global batch: the source draws by position (image files), or the global batch
        // is drawn whole, as one process would, and sliced (augmentation then continues exactly as in one process).
        var shards = job is null || stagesAsRanks ? null : ranges.Select(r => DataParallel.Shard(r, job.Rank, ranks)).ToList();
        var world = job is null ? null : Distributed.MpiWorld.Instance;
        using var averager = world is null || stagesAsRanks ? null
            : new Distributed.GradientAverager(world, Enumerable.Range(0, split.K).Select(j => local.TrainableParameters(j, j)).ToList(),
                Options.CollectiveTimeoutSeconds);
        bool writesFiles = job?.WritesFiles ?? true;
        var tensorBoard = TensorBoardDirectory is not null && writesFiles ? new TensorBoardLog(TensorBoardDirectory) : null;
        var schedule = new CosineWarmupSchedule(runPlan.LearningRate, Options.Epochs, batches);
        var epochs = new List<EpochMetrics>();
        string? lastCheckpoint = null;
        if (ResumeFrom is not null)
        {
            epochs.AddRange(TrainingCheckpoint.Restore(ResumeFrom, runPlan, local).Epochs);
            lastCheckpoint = ResumeFrom;
        }
        double trainSeconds = epochs.Sum(e => e.Seconds);
        using var monitor = EarlyStopping is null ? null : new EarlyStoppingMonitor(EarlyStopping);
        using var pipeline = runPlan.Pipeline is { } pipelinePlan
            ? new SegmentPipeline(local, PipelineLayoutOf(pipelinePlan))
            {
                Link = stagesAsRanks ? new Distributed.StageLink(world!, Options.CollectiveTimeoutSeconds) : null,
            }
            : null;
        var firstDevice = pipeline?.Layout.Devices[0] ?? device;
        bool stoppedEarly = false;
        long imagesSeen = (long)epochs.Count * train.Count;

        for (int epoch = epochs.Count; epoch < Options.Epochs; epoch++)
        {
            local.SetTraining(true);
            var clock = Stopwatch.StartNew();
            double lossSum = 0, firstRate = schedule.Rate(epoch, 0);
            long correct = 0, seen = 0;
            int skipped = 0;
            var segmentSums = new double[split.K];
            bool sliceShards = shards is not null && !train.DrawsByPosition;
            using var batchesOfEpoch = train.Epoch(new EpochSpec(Options.Seed, epoch, shards is null || sliceShards ? ranges : shards), cancellation);
            void Record(int b, StepResult result)
            {
                if (result.Skipped)
                {
                    SkippedSteps++;
                    skipped++;
                    return;
                }
                lossSum += result.Loss * result.Count;
                correct += result.Correct;
                seen += result.Count;
                for (int j = 0; j < split.K; j++) segmentSums[j] += result.SegmentLosses[j] * result.Count;
                BatchCompleted?.Invoke(new BatchProgress(epoch + 1, b + 1, batches, result.Loss, schedule.Rate(epoch, b)));
            }
            NonFiniteTrainingException Stopped(NonFiniteException e, int b) => new(
                (job is null ? "" : $"rank {job.Rank} of {job.Ranks}: ") +
                $"{e.What} of segment {e.Segment} became NaN or infinite at epoch {epoch + 1}, step {b + 1}; " +
                (pipeline is null ? "training stopped before applying it. "
                    : "training stopped before that segment's stage applied it (earlier stages may have). ") +
                (lastCheckpoint is null ? "There is no checkpoint of this run."
                    : $"The last good checkpoint is '{lastCheckpoint}' ({epochs.Count} epochs)."), e);
            if (pipeline is not null)
            {
                try
                {
                    pipeline.RunEpoch((long)epoch * batches, batches, b =>
                    {
                        using var scope = NewDisposeScope();
                        if (!batchesOfEpoch.MoveNext()) throw new InvalidOperationException($"The data gave {b} batches of the {batches} an epoch needs.");
                        var (images, labels) = batchesOfEpoch.Current;
                        return (Owned(images, firstDevice), Owned(labels, firstDevice));
                    }, b => schedule.Rate(epoch, b), OnNonFinite, Record, cancellation);
                }
                catch (PipelineStepException e) when (e.InnerException is NonFiniteException nonFinite)
                {
                    throw Stopped(nonFinite, e.Batch);
                }
                catch (PipelineStepException e)
                {
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerException!).Throw();
                }
            }
            else for (int b = 0; b < batches; b++)
            {
                cancellation.ThrowIfCancellationRequested();
                local.LearningRate = schedule.Rate(epoch, b);
                StepResult result;
                using (var scope = NewDisposeScope())
                {
                    if (!batchesOfEpoch.MoveNext()) throw new InvalidOperationException($"The data gave {b} batches of the {batches} an epoch needs.");
                    var (images, labels) = batchesOfEpoch.Current;
                    if (sliceShards)
                    {
                        var (start, end) = shards![b];
                        (images, labels) = (images.narrow(0, start - ranges[b].Item1, end - start), labels.narrow(0, start - ranges[b].Item1, end - start));
                    }
                    var x = images.to(device);
                    try
                    {
                        result = local.Step(x, labels.to(device), OnNonFinite, Options.MicroBatches, ranges[b].Item2 - ranges[b].Item1,
                            averager, epoch, b);
                    }
                    catch (NonFiniteException e)
                    {
                        throw Stopped(e, b);
                    }
                }
                Record(b, result);
            }
            Distributed.CommunicationFigures? communication = null;
            if (stagesAsRanks)
            {
                // Every rank received every batch's result (the same figures); each stage's state goes to every rank.
                pipeline!.ShareStages();
            }
            else if (world is not null)
            {
                // The epoch's figures over every rank; batch-norm statistics made the same on every rank before the
                // evaluation and the checkpoint (each rank's are of its own shards).
                (lossSum, correct, seen, segmentSums) = DataParallel.SumFigures(world, lossSum, correct, seen, segmentSums,
                    Options.CollectiveTimeoutSeconds, epoch);
                DataParallel.AverageStatistics(world, local, Options.CollectiveTimeoutSeconds, epoch);
                communication = averager!.TakeFigures();
            }
            double seconds = clock.Elapsed.TotalSeconds;
            trainSeconds += seconds;
            imagesSeen += seen;

            var evalClock = Stopwatch.StartNew();
            double waited = train.WaitSeconds;
            EvaluationResult? val = validation?.Evaluate(network, Options.EvaluationBatchSize, device, cancellation);
            var metrics = new EpochMetrics
            {
                Epoch = epoch + 1,
                TrainLoss = lossSum / seen,
                TrainAccuracy = (double)correct / seen,
                ValAccuracy = val?.Accuracy,
                ValLoss = val?.Loss,
                ValTop5Accuracy = val?.Top5Accuracy,
                DataWaitSeconds = waited,
                Lr = firstRate,
                Seconds = seconds,
                EvalSeconds = evalClock.Elapsed.TotalSeconds,
                SegmentLosses = segmentSums.Select(s => s / seen).ToArray(),
                SkippedSteps = skipped,
                Communication = communication,
            };
            epochs.Add(metrics);
            tensorBoard?.Write(metrics);
            EpochCompleted?.Invoke(metrics);
            stoppedEarly = monitor?.Observe(metrics, network) == true && epoch < Options.Epochs - 1;
            bool last = epoch == Options.Epochs - 1 || stoppedEarly;
            if (CheckpointPath is not null && writesFiles && (last || (CheckpointEvery > 0 && (epoch + 1) % CheckpointEvery == 0)))
            {
                TrainingCheckpoint.Save(CheckpointPath, runPlan, local, epochs);
                lastCheckpoint = CheckpointPath;
                CheckpointWritten?.Invoke(CheckpointPath, epochs.Count);
            }
            if (stoppedEarly) break;
        }
        // Early stopping hands back its best epoch, the figures of which are that epoch's.
        var returned = epochs[^1];
        if (monitor is not null && monitor.BestEpoch != returned.Epoch)
        {
            monitor.RestoreBest(network);
            returned = epochs[monitor.BestEpoch - 1];
        }

        Dictionary<string, double>? testAccuracy = null;
        if (tests is { Count: > 0 })
        {
            testAccuracy = new Dictionary<string, double>();
            foreach (var (name, data) in tests)
                testAccuracy[name] = data.Evaluate(network, Options.EvaluationBatchSize, device, cancellation).Accuracy;
        }
        var final = new FinalMetrics
        {
            ValAccuracy = returned.ValAccuracy,
            ValTop5Accuracy = returned.ValTop5Accuracy,
            BestEpoch = monitor is null ? null : monitor.BestEpoch,
            StoppedEarly = stoppedEarly,
            TestAccuracy = testAccuracy,
            TrainSeconds = trainSeconds,
            ImagesPerSecond = imagesSeen / trainSeconds,
            ParametersBackbone = network.ParameterCount(),
            ParametersAuxiliary = local.AuxiliaryParameterCount(),
            SkippedSteps = epochs.Sum(e => e.SkippedSteps),
        };
        network.eval();
        return new TrainingResult(network, split, epochs, final, runPlan);
    }
}
