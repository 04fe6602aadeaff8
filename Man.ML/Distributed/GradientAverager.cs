// Data-parallel local learning's one exchange: as soon as segment j's local backward has run on every micro-batch of
// this rank's shard, its gradients are final (nothing later in the step touches them), so they are summed across ranks
// by a non-blocking all-reduce while segment j + 1 computes. Each rank scales its loss by its share of the global batch,
// so the sum is the global batch's mean gradient, whatever the shard sizes. The optimizer steps once every segment's
// sum has arrived; what was waited for then is the communication the compute did not hide.
using System.Diagnostics;
using System.Runtime.InteropServices;
using TorchSharp.Modules;

namespace Man.ML.Distributed;

/// <summary>What a run's gradient exchange cost: bytes each rank puts into the all-reduces per step, and seconds.</summary>
/// <param name="Steps">Steps exchanged.</param>
/// <param name="BytesPerStep">Gradient bytes each rank contributes per step (all segments).</param>
/// <param name="CommunicationSeconds">Sum over steps and segments of each all-reduce's time in flight, from its start
/// to when it was seen complete (it is tested between segments, so this is an upper bound of its transfer).</param>
/// <param name="ExposedSeconds">Seconds the steps waited for all-reduces after their last segment: communication not
/// hidden behind compute, together with the wait for a slower rank.</param>
/// <param name="SegmentBytes">Each segment's gradient bytes per step.</param>
/// <param name="SegmentSeconds">Each segment's all-reduce time in flight, summed over the steps.</param>
public sealed record CommunicationFigures(long Steps, long BytesPerStep, double CommunicationSeconds, double ExposedSeconds,
    IReadOnlyList<long> SegmentBytes, IReadOnlyList<double> SegmentSeconds)
{
    /// <summary>The share of communication time hidden behind compute, in [0, 1] (1 when nothing was communicated).</summary>
    public double HiddenFraction => CommunicationSeconds <= 0 ? 1 : Math.Clamp(1 - ExposedSeconds / CommunicationSeconds, 0, 1);
}

internal sealed class GradientAverager : IDisposable
{
    private readonly MpiWorld world;
    private readonly double timeoutSeconds;
    private readonly Segment[] segments;
    private long steps;
    private double communicationSeconds, exposedSeconds;
    private readonly double[] segmentSeconds;

    private sealed class Segment(IReadOnlyList<Parameter> parameters, float[] values, GCHandle pin, Tensor flat)
    {
        public readonly IReadOnlyList<Parameter> Parameters = parameters;
        public readonly float[] Values = values;
        public GCHandle Pin = pin;
        public readonly Tensor Flat = flat; // shares Values' memory
        public MpiRequest? Request;
    }

    /// <param name="world">The job.</param>
    /// <param name="segmentParameters">Each segment's trained parameters (float32 master weights), in a fixed order:
    /// every rank builds the same list from the same plan.</param>
    /// <param name="timeoutSeconds">Longest wait for the other ranks.</param>
    public GradientAverager(MpiWorld world, IReadOnlyList<IReadOnlyList<Parameter>> segmentParameters, double timeoutSeconds)
    {
        this.world = world;
        this.timeoutSeconds = timeoutSeconds;
        segments = segmentParameters.Select(ps =>
        {
            long n = ps.Sum(p => p.numel());
            if (n > int.MaxValue) throw new InvalidOptionException("Distributed",
                $"A segment has {n} parameters; one all-reduce takes at most {int.MaxValue}.");
            var values = new float[Math.Max(1, n)];
            var pin = GCHandle.Alloc(values, GCHandleType.Pinned);
            var flat = frombuffer(values, ScalarType.Float32, n, 0, false).DetachFromDisposeScope();
            return new Segment(ps, values, pin, flat);
        }).ToArray();
        BytesPerStep = segmentParameters.Sum(ps => ps.Sum(p => p.numel())) * sizeof(float);
        segmentSeconds = new double[segments.Length];
    }

    public long BytesPerStep { get; }

    /// <summary>The figures so far, and resets them.</summary>
    public CommunicationFigures TakeFigures()
    {
        var figures = new CommunicationFigures(steps, BytesPerStep, communicationSeconds, exposedSeconds,
            segments.Select(s => s.Parameters.Sum(p => p.numel()) * sizeof(float)).ToArray(), segmentSeconds.ToArray());
        (steps, communicationSeconds, exposedSeconds) = (0, 0, 0);
        Array.Clear(segmentSeconds);
        return figures;
    }

    /// <summary>Segment <paramref name="j"/>'s gradients are final on this rank: starts their sum across ranks.</summary>
    public void Start(int j, int step)
    {
        var s = segments[j];
        if (s.Request is not null) throw new InvalidOperationException($"Segment {j}'s all-reduce was started twice in a step.");
        using (no_grad())
        {
            long offset = 0;
            foreach (var p in s.Parameters)
            {
                long n = p.numel();
                using var slot = s.Flat.narrow(0, offset, n);
                if (p.grad is { } g) slot.copy_(g.reshape(-1));
                else slot.zero_();
                offset += n;
            }
        }
        if (s.Parameters.Count > 0)
            s.Request = world.StartSum(s.Pin.AddrOfPinnedObject(), (int)s.Flat.numel(), MpiType.Float);
        Progress();
    }

    /// <summary>Lets Open MPI advance the all-reduces in flight (called between segments).</summary>
    public void Progress()
    {
        foreach (var s in segments)
            if (s.Request is { Done: false } r) world.Test(r);
    }

    /// <summary>Waits for every segment's sum and writes it into the gradients.</summary>
    /// <exception cref="DistributedException">Another rank did not answer in time.</exception>
    public void Finish(int epoch, int step)
    {
        long waitStart = Stopwatch.GetTimestamp();
        for (int j = 0; j < segments.Length; j++)
        {
            var s = segments[j];
            if (s.Request is not { } r) continue;
            world.Wait(r, timeoutSeconds, () => $"the gradient all-reduce of segment {j} at epoch {epoch + 1}, step {step + 1}");
        }
        exposedSeconds += Stopwatch.GetElapsedTime(waitStart).TotalSeconds;
        using (no_grad())
        {
            for (int j = 0; j < segments.Length; j++)
            {
                var s = segments[j];
                if (s.Request is not { } r) continue;
                double inFlight = Stopwatch.GetElapsedTime(r.Started, r.Completed).TotalSeconds;
                communicationSeconds += inFlight;
                segmentSeconds[j] += inFlight;
                s.Request = null;
                long offset = 0;
                foreach (var p in s.Parameters)
                {
                    long n = p.numel();
                    if (p.grad is { } g)
                    {
                        using var slot = s.Flat.narrow(0, offset, n);
                        using var view = slot.view(g.shape);
                        g.copy_(view);
                    }
                    offset += n;
                }
            }
        }
        steps++;
    }

    // An all-reduce still in flight writes into its buffer: a run abandoned mid-step (cancelled, or failed on this rank)
    // leaves that buffer pinned rather than let MPI write into freed memory.
    public void Dispose()
    {
        foreach (var s in segments)
        {
            if (s.Request is { Done: false }) continue;
            s.Flat.Dispose();
            if (s.Pin.IsAllocated) s.Pin.Free();
        }
    }
}
