// How a chain of units is cut into K gradient-isolated segments. K counts segments exactly: K = 1 is end-to-end
// backprop; ResNet-32 K = 16 and ResNet-110 K = 55 give every unit (the stem included) its own segment. The reference
// code's split tables are presets; any other K is split by balancing estimated activation memory.
using Man.ML.Models;

namespace Man.ML.Local;

/// <summary>A contiguous range of units: <see cref="Start"/> inclusive to <see cref="End"/> exclusive.</summary>
public readonly record struct Segment(int Start, int End)
{
    /// <summary>Number of units in the segment.</summary>
    public int Length => End - Start;
}

/// <summary>Where the split came from.</summary>
public enum SplitSource
{
    /// <summary>A split table of the reference code (InfoPro/MAN configs).</summary>
    ReferencePreset,

    /// <summary>The balancing rule (minimal peak, then most even, estimated activation memory).</summary>
    Balanced,
}

/// <summary>A network's chain of units cut into K contiguous, gradient-isolated segments.</summary>
public sealed class SplitPlan
{
    /// <summary>The segments in order; together they cover every unit once.</summary>
    public IReadOnlyList<Segment> Segments { get; }

    /// <summary>Number of segments (K).</summary>
    public int K => Segments.Count;

    /// <summary>Number of units split.</summary>
    public int UnitCount { get; }

    /// <summary>Where the split came from.</summary>
    public SplitSource Source { get; }

    private SplitPlan(IReadOnlyList<Segment> segments, int unitCount, SplitSource source)
    {
        Segments = segments;
        UnitCount = unitCount;
        Source = source;
    }

    /// <summary>
    /// Index of the unit right after segment <paramref name="segment"/>: the first unit of the next segment, which MAN
    /// copies. Undefined for the last segment.
    /// </summary>
    public int NextUnit(int segment)
    {
        if (segment < 0 || segment >= K - 1)
            throw new ArgumentOutOfRangeException(nameof(segment), segment, "Only segments before the last have a next unit.");
        return Segments[segment + 1].Start;
    }

    /// <summary>Builds a plan from the indices of each segment's last unit (the last entry must be the last unit).</summary>
    public static SplitPlan FromSegmentEnds(IReadOnlyList<int> lastUnits, int unitCount, SplitSource source = SplitSource.Balanced)
    {
        if (lastUnits.Count == 0 || lastUnits[^1] != unitCount - 1)
            throw new ArgumentException("The last segment must end at the last unit.", nameof(lastUnits));
        var segments = new List<Segment>();
        int start = 0;
        foreach (int last in lastUnits)
        {
            if (last < start) throw new ArgumentException("Segment ends must be strictly increasing.", nameof(lastUnits));
            segments.Add(new Segment(start, last + 1));
            start = last + 1;
        }
        return new SplitPlan(segments, unitCount, source);
    }

    /// <summary>
    /// Splits <paramref name="network"/> into <paramref name="k"/> segments: the reference table when one exists for
    /// this architecture and K, otherwise the balancing rule.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">K is below 1 or above the number of units.</exception>
    public static SplitPlan Create(UnitChainNetwork network, int k)
    {
        int units = network.Units.Count;
        if (k < 1 || k > units)
            throw new ArgumentOutOfRangeException(nameof(k), k,
                $"K must be between 1 and {units} for {network.Architecture} ({units} units: the stem and {units - 1} blocks).");
        if (network is CifarResNet resnet && ReferencePresets.TryGet(resnet.BlocksPerStage, k, out var ends))
            return FromSegmentEnds(ends, units, SplitSource.ReferencePreset);
        return Balanced(network.UnitInfos.Select(u => (double)u.ActivationElements).ToArray(), k);
    }

    /// <summary>
    /// The balancing rule: among all ways to cut units with the given costs into <paramref name="k"/> contiguous
    /// segments, those with the smallest largest segment cost (the peak memory of local learning), and among them the
    /// one with the smallest sum of squared segment costs (the most even). Exact, by dynamic programming.
    /// </summary>
    public static SplitPlan Balanced(IReadOnlyList<double> unitCosts, int k)
    {
        int n = unitCosts.Count;
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k), k, $"K must be between 1 and {n}.");
        var prefix = new double[n + 1];
        for (int i = 0; i < n; i++) prefix[i + 1] = prefix[i] + unitCosts[i];
        double Cost(int a, int b) => prefix[b] - prefix[a]; // units a..b-1

        // Phase 1: the smallest achievable peak. best[s, i] = min over splits of units 0..i-1 into s segments.
        var peak = new double[k + 1, n + 1];
        for (int s = 0; s <= k; s++) for (int i = 0; i <= n; i++) peak[s, i] = double.PositiveInfinity;
        peak[0, 0] = 0;
        for (int s = 1; s <= k; s++)
            for (int i = s; i <= n; i++)
                for (int j = s - 1; j < i; j++)
                    peak[s, i] = Math.Min(peak[s, i], Math.Max(peak[s - 1, j], Cost(j, i)));
        double limit = peak[k, n] * (1 + 1e-12);

        // Phase 2: the most even split whose segments all stay within that peak.
        var squares = new double[k + 1, n + 1];
        var from = new int[k + 1, n + 1];
        for (int s = 0; s <= k; s++) for (int i = 0; i <= n; i++) squares[s, i] = double.PositiveInfinity;
        squares[0, 0] = 0;
        for (int s = 1; s <= k; s++)
            for (int i = s; i <= n; i++)
                for (int j = s - 1; j < i; j++)
                {
                    double c = Cost(j, i);
                    if (c > limit || double.IsPositiveInfinity(squares[s - 1, j])) continue;
                    double v = squares[s - 1, j] + c * c;
                    if (v < squares[s, i]) { squares[s, i] = v; from[s, i] = j; }
                }
        var ends = new int[k];
        for (int s = k, i = n; s >= 1; s--)
        {
            ends[s - 1] = i - 1;
            i = from[s, i];
        }
        return FromSegmentEnds(ends, n, SplitSource.Balanced);
    }

    /// <summary>Describes the segments with unit names, for example <c>stem+layer1[0] | layer1[1..2] | ...</c>.</summary>
    public string Describe(UnitChainNetwork network)
    {
        string Name(int i) => network.UnitInfos[i].Name;
        return string.Join(" | ", Segments.Select(s => s.Length == 1 ? Name(s.Start) : $"{Name(s.Start)}..{Name(s.End - 1)}"));
    }
}

/// <summary>
/// The reference split tables for CIFAR ResNet-32 (n = 5) and ResNet-110 (n = 18) (reference-code-spec.md §1.2).
/// Entries are (stage, block) of each segment's last residual block, 1-based stages and 0-based blocks, as in the MAN
/// configs; stage 0 block 0 means "the stem". The stem belongs to the first segment unless the table starts with (0,0).
/// </summary>
internal static class ReferencePresets
{
    private static readonly Dictionary<(int BlocksPerStage, int K), (int Stage, int Block)[]> Tables = new()
    {
        [(5, 2)] = new[] { (2, 1), (3, 4) },
        [(5, 3)] = new[] { (1, 4), (2, 4), (3, 4) },
        [(5, 4)] = new[] { (1, 2), (2, 1), (3, 0), (3, 4) },
        [(5, 8)] = new[] { (1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2), (3, 4) },
        [(5, 15)] = EveryBlock(5, stemAlone: false),  // the MAN ECCV code's "K=16": stem merged into layer1[0]
        [(5, 16)] = EveryBlock(5, stemAlone: true),   // InfoPro's K=16: the stem is its own segment
        [(18, 2)] = new[] { (2, 8), (3, 17) },
        [(18, 3)] = new[] { (1, 17), (2, 17), (3, 17) },
        [(18, 4)] = new[] { (1, 11), (2, 7), (3, 3), (3, 17) },
        [(18, 8)] = new[] { (1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10), (3, 17) },
        [(18, 16)] = new[]
        {
            (1, 1), (1, 4), (1, 7), (1, 10), (1, 13), (1, 16), (2, 1), (2, 4), (2, 7), (2, 11), (2, 15),
            (3, 1), (3, 5), (3, 9), (3, 13), (3, 17),
        },
        [(18, 32)] = Stage(1, 1, 2, 4, 5, 7, 9, 11, 13, 14, 16, 17)
            .Concat(Stage(2, 1, 2, 4, 5, 7, 9, 11, 13, 14, 16, 17))
            .Concat(Stage(3, 1, 3, 4, 6, 7, 9, 11, 13, 15, 17)).ToArray(),
        [(18, 54)] = EveryBlock(18, stemAlone: false), // the MAN ECCV code's "K=55"
        [(18, 55)] = EveryBlock(18, stemAlone: true),
    };

    public static bool TryGet(int blocksPerStage, int k, out int[] lastUnits)
    {
        if (Tables.TryGetValue((blocksPerStage, k), out var table))
        {
            lastUnits = table.Select(e => e.Stage == 0 ? 0 : 1 + (e.Stage - 1) * blocksPerStage + e.Block).ToArray();
            return true;
        }
        lastUnits = Array.Empty<int>();
        return false;
    }

    /// <summary>The raw table entries, for tests and documentation.</summary>
    public static IReadOnlyDictionary<(int BlocksPerStage, int K), (int Stage, int Block)[]> All => Tables;

    private static IEnumerable<(int, int)> Stage(int stage, params int[] blocks) => blocks.Select(b => (stage, b));

    private static (int, int)[] EveryBlock(int n, bool stemAlone)
    {
        var list = new List<(int, int)>();
        if (stemAlone) list.Add((0, 0));
        for (int s = 1; s <= 3; s++) for (int b = 0; b < n; b++) list.Add((s, b));
        return list.ToArray();
    }
}
