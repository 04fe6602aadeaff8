// Peak training memory of one configuration, measured the way docs/PLATFORM.md §Memory prescribes: warm up, let the
// collector run, reset the resident high-water mark, run the measured steps, report the peak above the resident size
// just before them. Meaningful only in a process of its own started with MALLOC_MMAP_THRESHOLD_=65536 (so freed
// tensor memory goes back to the OS); the caller starts such a process.
using Man.ML.Local;
using Man.ML.Training;

namespace Man.ML.Diagnostics;

/// <summary>Peak resident memory of training steps above the pre-step baseline.</summary>
/// <param name="PeakAboveBaselineBytes">VmHWM during the measured steps minus VmRSS just before them.</param>
/// <param name="BaselineBytes">VmRSS just before the measured steps (weights, optimizer state, runtime).</param>
/// <param name="Steps">Measured steps.</param>
/// <param name="MallocThresholdSet">Whether the memory-tracking setting was in this process's environment
/// (CPU: MALLOC_MMAP_THRESHOLD_; CUDA: PYTORCH_NO_CUDA_MEMORY_CACHING=1).</param>
internal sealed record TrainingMemoryReport(long PeakAboveBaselineBytes, long BaselineBytes, int Steps, bool MallocThresholdSet)
{
    /// <summary>Most batches the measured steps can hold at once (1 for the sequential step; a pipeline's stages and the
    /// batches waiting between them).</summary>
    public int BatchesInFlight { get; init; } = 1;

    /// <summary>Peak above baseline in MiB.</summary>
    public double PeakAboveBaselineMiB => PeakAboveBaselineBytes / (1024.0 * 1024.0);
}

/// <summary>Measures the peak memory of training steps on synthetic CIFAR-shaped data.</summary>
internal static class TrainingMemoryProbe
{
    /// <summary>Runs <paramref name="warmupSteps"/> then <paramref name="steps"/> measured steps of the configuration.</summary>
    public static TrainingMemoryReport Measure(TrainingOptions options, int steps = 3, int warmupSteps = 2, int classes = 10, int imageSize = 32)
    {
        if (options.Device.StartsWith("cuda", StringComparison.OrdinalIgnoreCase)) return MeasureCuda(options, steps, warmupSteps, classes, imageSize);
        if (!ProcessMemory.IsSupported) throw new PlatformNotSupportedException("Memory probing reads /proc (Linux only).");
        var trainer = new Trainer(options);
        using var local = trainer.CreateLocalTrainer(classes, imageSize);
        var device = local.Device;
        var network = local.Network;
        local.SetTraining(true);
        var generator = new Random(options.Seed);
        var labels = Enumerable.Range(0, options.BatchSize).Select(_ => (long)generator.Next(classes)).ToArray();
        using var y = tensor(labels, dtype: ScalarType.Int64).to(device);
        using var x = randn(options.BatchSize, 3, imageSize, imageSize).to(device);

        // A pipelined run's steps are one epoch of the pipeline each time, so the batches in flight between its stages
        // (activations, labels, images, MAN's parameter snapshots) are in the peak.
        var plan = trainer.Plan;
        using var pipeline = plan?.Pipeline is { } p ? new SegmentPipeline(local, Trainer.PipelineLayoutOf(p)) : null;
        void Run(int n)
        {
            if (pipeline is null)
            {
                for (int i = 0; i < n; i++) local.Step(x, y);
                return;
            }
            pipeline.RunEpoch(0, n, _ => (x.alias().DetachFromDisposeScope(), y.alias().DetachFromDisposeScope()), _ => plan!.LearningRate,
                NonFinitePolicy.Stop, (_, _) => { }, CancellationToken.None);
        }
        Run(warmupSteps);
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long baseline = ProcessMemory.ResidentBytes();
        ProcessMemory.ResetPeak();
        Run(steps);
        long peak = ProcessMemory.PeakResidentBytes();
        network.Dispose();
        return new TrainingMemoryReport(Math.Max(0, peak - baseline), baseline, steps,
            Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") is not null)
        {
            // Stage s holds one batch while up to d + 1 wait before it: at most W + (W − 1)(d + 1) batches at once.
            BatchesInFlight = plan?.Pipeline is { } q ? q.Stages.Count + (q.Stages.Count - 1) * (q.Depth + 1) : 1,
        };
    }

    // On CUDA: device memory sampled through NVML around the measured steps (the baseline holds weights, gradients and
    // optimizer state after warm-up). Meaningful with PYTORCH_NO_CUDA_MEMORY_CACHING=1, else it includes the allocator's cache.
    private static TrainingMemoryReport MeasureCuda(TrainingOptions options, int steps, int warmupSteps, int classes, int imageSize)
    {
        using var local = new Trainer(options).CreateLocalTrainer(classes, imageSize);
        var device = local.Device;
        local.SetTraining(true);
        var generator = new Random(options.Seed);
        using var y = tensor(Enumerable.Range(0, options.BatchSize).Select(_ => (long)generator.Next(classes)).ToArray()).to(device);
        using var x = randn(options.BatchSize, 3, imageSize, imageSize).to(device);
        for (int i = 0; i < warmupSteps; i++) local.Step(x, y);
        cuda.synchronize();
        using var sampler = new CudaMemorySampler(device.index < 0 ? 0 : device.index);
        long baseline = sampler.UsedBytes();
        sampler.ResetPeak();
        for (int i = 0; i < steps; i++) local.Step(x, y);
        cuda.synchronize();
        long peak = sampler.PeakBytes;
        local.Network.Dispose();
        return new TrainingMemoryReport(Math.Max(0, peak - baseline), baseline, steps,
            Environment.GetEnvironmentVariable("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1");
    }
}
