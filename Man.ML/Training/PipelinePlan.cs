// A pipelined run's stages as the plan resolves them (docs/PIPELINE.md): which segments each stage trains, on which
// device, with how many libtorch threads, and the depth d. Resolved once, with the rest of the run, in RunPlan.Build.
using Man.ML.Local;

namespace Man.ML.Training;

/// <summary>One stage of a pipelined run.</summary>
/// <param name="FirstSegment">Its first segment.</param>
/// <param name="LastSegment">Its last segment.</param>
/// <param name="Device">Its device (canonical name).</param>
/// <param name="EstimatedShare">Its share of the step's estimated cost (0 to 1).</param>
public sealed record PipelineStagePlan(int FirstSegment, int LastSegment, string Device, double EstimatedShare);

/// <summary>A pipelined run's layout.</summary>
/// <param name="Stages">The W stages, in order.</param>
/// <param name="Depth">d (<see cref="TrainingOptions.PipelineDepth"/>).</param>
/// <param name="ThreadsPerStage">libtorch threads of each stage's worker.</param>
/// <param name="Balanced">Whether the boundaries were chosen by estimated cost (false: given as <see cref="TrainingOptions.StageEnds"/>).</param>
public sealed record PipelinePlan(IReadOnlyList<PipelineStagePlan> Stages, int Depth, int ThreadsPerStage, bool Balanced)
{
    /// <summary>One line, for example <c>2 stages: segments 0–5 | 6–15 (balanced, estimated 49 % | 51 %), depth 1, 1 thread each on cpu</c>.</summary>
    public string Describe()
    {
        var devices = Stages.Select(s => s.Device).Distinct().ToList();
        var segments = Stages.Select(s => s.FirstSegment == s.LastSegment ? $"{s.FirstSegment}" : $"{s.FirstSegment}–{s.LastSegment}");
        var shares = Stages.Select(s => FormattableString.Invariant($"{100 * s.EstimatedShare:0} %"));
        return $"{Stages.Count} stages: segments {string.Join(" | ", segments)} " +
            $"({(Balanced ? "balanced, " : "as given, ")}estimated {string.Join(" | ", shares)}), " +
            $"depth {Depth}{(Depth == 0 ? " (lock-step)" : "")}, {ThreadsPerStage} thread{(ThreadsPerStage == 1 ? "" : "s")} each on " +
            (devices.Count == 1 ? devices[0] : string.Join(", ", Stages.Select(s => s.Device)));
    }

    /// <summary>Resolves the pipeline of validated <paramref name="options"/> from each segment's estimated cost (null: sequential).</summary>
    internal static PipelinePlan? Resolve(TrainingOptions options, int k, Func<IReadOnlyList<double>> segmentCosts)
    {
        int w = options.ResolvedPipelineStages;
        if (w <= 1) return null;
        var costs = segmentCosts();
        var ends = options.StageEnds?.ToArray() ?? StageBalance.Ends(costs, w);
        var stages = StageBalance.Stages(ends, k);
        double total = costs.Sum();
        var devices = options.StageDevices?.Select(d => Devices.Canonical(d, nameof(TrainingOptions.StageDevices))).ToArray()
            ?? Enumerable.Repeat(Devices.Canonical(options.Device), w).ToArray();
        int threads = options.StageThreads ?? Math.Max(1, Environment.ProcessorCount / w);
        return new PipelinePlan(
            stages.Select((s, i) => new PipelineStagePlan(s.First, s.Last, devices[i],
                total > 0 ? Enumerable.Range(s.First, s.Last - s.First + 1).Sum(j => costs[j]) / total : 1.0 / w)).ToArray(),
            options.PipelineDepth, threads, options.StageEnds is null);
    }
}
