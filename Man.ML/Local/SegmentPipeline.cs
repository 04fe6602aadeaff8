// Pipelined local learning (docs/PIPELINE.md). The K segments are grouped into W contiguous stages; each stage runs on
// its own dedicated thread (TorchSharp's dispose scopes, libtorch's grad mode and its OpenMP thread budget all belong to
// a thread), with its own device. Stage s trains batch t while stage s + 1 trains batch t − 1: detached activations,
// labels and images flow downstream through bounded channels, and each stage steps its own parameters right after its
// own backward. No gradient crosses a stage boundary, so the only thing a stage needs from another besides its input
// is what MAN's EMA copy at the boundary follows: the next stage's first unit. Those parameters flow upstream as
// snapshots, one per step, and the copy of batch t follows the snapshot taken after step max(t − d, e₀) of the next
// stage (d: the pipeline's depth; e₀: the epoch's first step), fixed by batch index, never by timing. With d = 0 that
// is exactly what the sequential step reads, so the run equals the sequential one.
using System.Threading.Channels;
using TorchSharp.Modules;

namespace Man.ML.Local;

/// <summary>How a pipelined run is laid out.</summary>
/// <param name="Stages">Each stage's first and last segment (contiguous, covering 0..K−1).</param>
/// <param name="Depth">d: how many steps the next stage's parameters that MAN's EMA copy follows may lag.</param>
/// <param name="Devices">Each stage's device.</param>
/// <param name="ThreadsPerStage">libtorch intra-op threads of each stage's worker.</param>
internal sealed record PipelineLayout(IReadOnlyList<(int First, int Last)> Stages, int Depth, IReadOnlyList<Device> Devices,
    int ThreadsPerStage)
{
    /// <summary>The device of every segment.</summary>
    public IReadOnlyList<Device> SegmentDevices() =>
        Stages.SelectMany((s, i) => Enumerable.Repeat(Devices[i], s.Last - s.First + 1)).ToArray();
}

/// <summary>A stage of a pipelined step failed; <see cref="Exception.InnerException"/> says how.</summary>
internal sealed class PipelineStepException(Exception inner, int batch, int stage)
    : Exception($"Stage {stage} failed at batch {batch + 1}: {inner.Message}", inner)
{
    /// <summary>Index of the batch in its epoch.</summary>
    public int Batch { get; } = batch;

    /// <summary>The stage.</summary>
    public int Stage { get; } = stage;
}

/// <summary>Runs a <see cref="LocalTrainer"/>'s steps as a pipeline of stages on worker threads.</summary>
internal sealed partial class SegmentPipeline : IDisposable
{
    // One long-lived thread per stage, for every epoch of the run: a thread keeps its libtorch thread budget, and its
    // native heap arena stays warm from one epoch to the next. Each epoch is one job per worker.
    private readonly List<Thread> threads = new();
    private readonly List<System.Collections.Concurrent.BlockingCollection<Action>> jobs = new();

    private void StartWorkers()
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        if (threads.Count > 0) return;
        for (int stage = 0; stage < W; stage++)
        {
            var queue = new System.Collections.Concurrent.BlockingCollection<Action>();
            var thread = new Thread(() =>
            {
                Interlocked.Increment(ref runningWorkers);
                try
                {
                    set_num_threads(layout.ThreadsPerStage); // this thread's budget (OpenMP's thread count is per thread)
                    foreach (var job in queue.GetConsumingEnumerable()) job();
                }
                finally
                {
                    Interlocked.Decrement(ref runningWorkers);
                }
            })
            {
                Name = $"manml-stage-{stage}",
                IsBackground = true,
            };
            jobs.Add(queue);
            threads.Add(thread);
            thread.Start();
        }
    }

    private bool disposed;

    /// <summary>Ends the stage workers (they are idle between epochs) and waits for them.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        foreach (var queue in jobs) queue.CompleteAdding();
        foreach (var thread in threads) thread.Join();
        foreach (var queue in jobs) queue.Dispose();
    }

    private readonly LocalTrainer local;
    private readonly PipelineLayout layout;
    private readonly IReadOnlyList<Parameter>[] trainable;
    private readonly IReadOnlyList<Tensor>[] stepState;
    private readonly bool followsNext;

    /// <summary>Builds the pipeline over <paramref name="local"/>, whose segments already sit on the layout's devices.</summary>
    public SegmentPipeline(LocalTrainer local, PipelineLayout layout)
    {
        this.local = local;
        this.layout = layout;
        trainable = layout.Stages.Select(s => local.TrainableParameters(s.First, s.Last)).ToArray();
        stepState = layout.Stages.Select(s => local.StepState(s.First, s.Last)).ToArray();
        followsNext = local.Man?.FollowsNextUnit == true;
    }

    /// <summary>The pipeline's layout.</summary>
    public PipelineLayout Layout => layout;

    private static int runningWorkers;
    private static long liveMessages;

    /// <summary>Stage worker threads alive now, in every pipeline of the process (none once every pipeline is disposed).</summary>
    internal static int RunningWorkers => Volatile.Read(ref runningWorkers);

    /// <summary>Batches and parameter snapshots held between stages now (each holds tensors), in every pipeline of the process.</summary>
    internal static long LiveMessages => Interlocked.Read(ref liveMessages);

    private int W => layout.Stages.Count;

    // What travels downstream: one batch, owned by whoever holds the message.
    private sealed class Work : IDisposable
    {
        private int disposed;

        public Work() => Interlocked.Increment(ref liveMessages);

        public required int Batch { get; init; }
        public required double Rate { get; init; }
        public required Tensor Labels { get; set; }
        public required Tensor Images { get; set; }
        public Tensor? Activation { get; set; }
        public required float[] Losses { get; init; }
        public long Correct { get; set; }
        public bool Skipped { get; set; }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref disposed, 1) == 1) return;
            Activation?.Dispose();
            Images.Dispose();
            Labels.Dispose();
            Interlocked.Decrement(ref liveMessages);
        }
    }

    // What travels upstream: the next stage's first unit's parameters after `Version` steps, on the upstream device.
    private sealed class Snapshot : IDisposable
    {
        private int disposed;

        public Snapshot(long version, Tensor[] parameters)
        {
            Version = version;
            Parameters = parameters;
            Interlocked.Increment(ref liveMessages);
        }

        public long Version { get; }

        public Tensor[] Parameters { get; }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref disposed, 1) == 1) return;
            foreach (var p in Parameters) p.Dispose();
            Interlocked.Decrement(ref liveMessages);
        }
    }

    // For the stage before (in one process: on its device; between ranks: on the CPU, where the message is made).
    private Snapshot TakeSnapshot(int stage, long version) => TakeSnapshot(stage, version, Link is null ? layout.Devices[stage - 1] : CPU);

    private Snapshot TakeSnapshot(int stage, long version, Device target)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var unit = local.Network.Units[local.Split.Segments[layout.Stages[stage].First].Start];
        return new Snapshot(version, unit.parameters().Select(p => p.detach().clone().to(target).DetachFromDisposeScope()).ToArray());
    }

    /// <summary>
    /// Trains one epoch's <paramref name="batches"/> batches, which <paramref name="nextBatch"/> makes on the calling
    /// thread (images and labels, on stage 0's device, owned by the pipeline from then on); <paramref name="onResult"/>
    /// is called on the calling thread for each batch, in batch order. In one process the calling thread runs at one
    /// libtorch thread during the epoch and gets its own budget back afterwards. Returns when every stage has finished the epoch
    /// (the pipeline drains: evaluation and checkpoints see one consistent network).
    /// </summary>
    /// <param name="firstStep">The run's step count before this epoch (e₀).</param>
    /// <param name="batches">Batches of the epoch.</param>
    /// <param name="nextBatch">Makes batch b.</param>
    /// <param name="rate">The learning rate of batch b.</param>
    /// <param name="policy">What a stage does with a non-finite loss or gradient.</param>
    /// <param name="onResult">Receives each batch's result.</param>
    /// <param name="cancellation">Stops the epoch between batches; every worker has ended when it throws.</param>
    /// <exception cref="PipelineStepException">A stage failed (for example a non-finite value under
    /// <see cref="NonFinitePolicy.Stop"/>); every worker has ended.</exception>
    public void RunEpoch(long firstStep, int batches, Func<int, (Tensor Images, Tensor Labels)> nextBatch, Func<int, double> rate,
        NonFinitePolicy policy, Action<int, StepResult> onResult, CancellationToken cancellation)
    {
        if (Link is { } link)
        {
            RunEpochAsRank(link, firstStep, batches, nextBatch, rate, policy, onResult, cancellation);
            return;
        }
        // The calling thread makes the batches and reads the results while the stages compute on the same cores: at its
        // own intra-op budget every small op it runs would wake OpenMP workers that then spin on the stages' cores.
        int callerThreads = get_num_threads();
        set_num_threads(1);
        try
        {
            RunEpochInProcess(firstStep, batches, nextBatch, rate, policy, onResult, cancellation);
        }
        finally
        {
            set_num_threads(callerThreads);
        }
    }

    private void RunEpochInProcess(long firstStep, int batches, Func<int, (Tensor Images, Tensor Labels)> nextBatch,
        Func<int, double> rate, NonFinitePolicy policy, Action<int, StepResult> onResult, CancellationToken cancellation)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        var token = stop.Token;
        // Readers block on their own thread (not awaiting), so a write wakes the reader directly rather than through a
        // thread-pool hop: synchronous continuations keep the two busy cores free of extra threads.
        var work = Enumerable.Range(0, W).Select(_ => Channel.CreateBounded<Work>(new BoundedChannelOptions(layout.Depth + 1)
        {
            SingleReader = true, SingleWriter = true, AllowSynchronousContinuations = true,
        })).ToArray();
        var results = Channel.CreateUnbounded<Work>(new UnboundedChannelOptions
        {
            SingleReader = true, SingleWriter = true, AllowSynchronousContinuations = true,
        });
        // snapshots[s]: from stage s + 1 up to stage s; unbounded, but never more than d + 2 deep (stage s + 1 trails s).
        var snapshots = Enumerable.Range(0, W - 1).Select(_ => Channel.CreateUnbounded<Snapshot>(new UnboundedChannelOptions
        {
            SingleReader = true, SingleWriter = true, AllowSynchronousContinuations = true,
        })).ToArray();
        var initial = Enumerable.Range(0, W - 1).Select(s => followsNext ? TakeSnapshot(s + 1, firstStep) : null).ToArray();
        PipelineStepException? failure = null;
        var gate = new object();
        void Fail(PipelineStepException e)
        {
            lock (gate)
            {
                // The earliest batch, then the earliest stage: the same failure whatever the timing.
                if (failure is null || (e.Batch, e.Stage).CompareTo((failure.Batch, failure.Stage)) < 0) failure = e;
            }
            stop.Cancel();
        }

        StartWorkers();
        using var finished = new CountdownEvent(W);
        for (int stage = 0; stage < W; stage++)
        {
            int s = stage;
            jobs[s].Add(() =>
            {
                try
                {
                    RunStage(s, firstStep, work[s].Reader, s + 1 < W ? work[s + 1].Writer : results.Writer,
                        s + 1 < W ? snapshots[s].Reader : null, initial.ElementAtOrDefault(s), s > 0 && followsNext ? snapshots[s - 1].Writer : null,
                        policy, Fail, token);
                }
                finally
                {
                    (s + 1 < W ? work[s + 1].Writer : results.Writer).TryComplete();
                    if (s > 0) snapshots[s - 1].Writer.TryComplete();
                    finished.Signal();
                }
            });
        }

        int delivered = 0;
        void Deliver(Work done)
        {
            using (done) onResult(done.Batch, new StepResult(done.Losses[^1], done.Correct, done.Labels.shape[0], done.Losses, done.Skipped));
            delivered++;
        }
        try
        {
            for (int b = 0; b < batches && !token.IsCancellationRequested; b++)
            {
                var (images, labels) = nextBatch(b);
                var item = new Work
                {
                    Batch = b, Rate = rate(b), Images = images, Labels = labels, Losses = new float[local.Split.K],
                };
                if (!Write(work[0].Writer, item, token)) break;
                while (results.Reader.TryRead(out var done)) Deliver(done);
            }
            work[0].Writer.TryComplete();
            while (Read(results.Reader, token) is { } done) Deliver(done);
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested)
        {
        }
        finally
        {
            work[0].Writer.TryComplete();
            if (delivered < batches) stop.Cancel();
            finished.Wait();
            // Whatever was in flight when the epoch stopped.
            foreach (var channel in work) while (channel.Reader.TryRead(out var left)) left.Dispose();
            while (results.Reader.TryRead(out var left)) left.Dispose();
            foreach (var channel in snapshots) while (channel.Reader.TryRead(out var left)) left.Dispose();
            foreach (var s in initial) s?.Dispose();
        }
        if (failure is not null) throw failure;
        cancellation.ThrowIfCancellationRequested();
        if (delivered < batches) throw new InvalidOperationException($"The pipeline delivered {delivered} of {batches} batches.");
    }

    private void RunStage(int stage, long firstStep, ChannelReader<Work> input, ChannelWriter<Work> output,
        ChannelReader<Snapshot>? fromNext, Snapshot? initialNext, ChannelWriter<Snapshot>? toPrevious, NonFinitePolicy policy,
        Action<PipelineStepException> fail, CancellationToken token)
    {
        var (first, last) = layout.Stages[stage];
        var next = initialNext; // owned by initial[] of RunEpoch; replaced ones are disposed here
        Work? item = null;
        try
        {
            while ((item = Read(input, token)) is not null)
            {
                long step = firstStep + item.Batch;
                if (!item.Skipped)
                {
                    try
                    {
                        TrainStage(stage, first, last, item, step, policy, () =>
                        {
                            // What MAN's EMA copy of the boundary follows for this step: the next stage after step max(t − d, e₀).
                            long version = Math.Max(step - layout.Depth, firstStep);
                            while (next!.Version < version)
                            {
                                var newer = Read(fromNext!, token)
                                    ?? throw new OperationCanceledException("The next stage ended before sending its parameters.");
                                if (!ReferenceEquals(next, initialNext)) next.Dispose();
                                next = newer;
                            }
                            return next.Parameters;
                        });
                    }
                    catch (NonFiniteException e)
                    {
                        fail(new PipelineStepException(e, item.Batch, stage));
                        return;
                    }
                }
                // Parameters after this step, for the previous stage's EMA copy (also after a dropped step: versions
                // count steps, taken or not).
                if (toPrevious is not null && !Write(toPrevious, TakeSnapshot(stage, step + 1), token)) return;
                if (stage + 1 < layout.Stages.Count && Link is null) Carry(item, layout.Devices[stage + 1]);
                var sent = item;
                item = null;
                if (!Write(output, sent, token)) return;
            }
        }
        catch (OperationCanceledException) when (token.IsCancellationRequested)
        {
        }
        catch (Exception e)
        {
            fail(new PipelineStepException(e, item?.Batch ?? -1, stage));
        }
        finally
        {
            item?.Dispose();
            if (next is not null && !ReferenceEquals(next, initialNext)) next.Dispose();
        }
    }

    // One stage's part of a step: its segments' local forward and backward in turn, the gradient check, its SGD step.
    private void TrainStage(int stage, int first, int last, Work item, long step, NonFinitePolicy policy,
        Func<IReadOnlyList<Tensor>> boundaryNext)
    {
        using var scope = NewDisposeScope();
        var state = policy == NonFinitePolicy.SkipStep ? stepState[stage].Select(b => b.detach().clone()).ToList() : null;
        foreach (var p in trainable[stage])
        {
            using var grad = p.grad;
            grad?.zero_();
        }
        var targets = new LocalTargets(item.Labels, item.Images);
        Tensor x = item.Activation ?? item.Images;
        try
        {
            for (int j = first; j <= last; j++)
            {
                var result = local.TrainSegment(j, x, targets, j == last && stage + 1 < layout.Stages.Count && followsNext ? boundaryNext : null);
                item.Losses[j] = result.Loss;
                item.Correct = result.Correct;
                if (!ReferenceEquals(x, item.Images)) x.Dispose();
                x = result.Output!;
            }
            local.CheckGradients(first, last);
        }
        catch (NonFiniteException) when (policy == NonFinitePolicy.SkipStep)
        {
            // This stage's update is dropped, and so are the later stages' parts of the batch (they never see it).
            if (!ReferenceEquals(x, item.Images)) x?.Dispose();
            using (no_grad()) foreach (var (buffer, copy) in stepState[stage].Zip(state!)) buffer.copy_(copy);
            item.Activation?.Dispose();
            item.Activation = null;
            item.Skipped = true;
            for (int j = first; j < item.Losses.Length; j++) item.Losses[j] = float.NaN;
            return;
        }
        local.StepParameters(trainable[stage], item.Rate);
        item.Activation?.Dispose();
        item.Activation = x is null || ReferenceEquals(x, item.Images) ? null : x.DetachFromDisposeScope();
    }

    // Moves a batch's tensors to the next stage's device (nothing moves when it is the same device).
    private static void Carry(Work item, Device target)
    {
        item.Images = MoveTo(item.Images, target);
        item.Labels = MoveTo(item.Labels, target);
        if (item.Activation is { } a) item.Activation = MoveTo(a, target);
    }

    private static Tensor MoveTo(Tensor t, Device target)
    {
        if (t.device_type == target.type && t.device_index == target.index) return t;
        using var scope = NewDisposeScope();
        var moved = t.to(target).DetachFromDisposeScope();
        t.Dispose();
        return moved;
    }

    private static T? Read<T>(ChannelReader<T> reader, CancellationToken token) where T : class
    {
        while (true)
        {
            if (reader.TryRead(out var item)) return item;
            if (!reader.WaitToReadAsync(token).AsTask().GetAwaiter().GetResult()) return null;
        }
    }

    // False (and the item disposed) when the channel was closed by a stage that ended.
    private static bool Write<T>(ChannelWriter<T> writer, T item, CancellationToken token) where T : IDisposable
    {
        try
        {
            if (writer.TryWrite(item)) return true;
            while (writer.WaitToWriteAsync(token).AsTask().GetAwaiter().GetResult())
                if (writer.TryWrite(item)) return true;
        }
        catch (OperationCanceledException)
        {
            item.Dispose();
            throw;
        }
        item.Dispose();
        return false;
    }
}
