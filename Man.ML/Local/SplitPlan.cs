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
    [ChoiceName("reference-preset")]
    ReferencePreset,

    /// <summary>The balancing rule (minimal peak, then most even, estimated activation memory).</summary>
    [ChoiceName("balanced")]
    Balanced,
}

/// <summary>A split asked for by name: one of the reference code's tables, or the balancing rule.</summary>
public enum SplitTable
{
    /// <summary>The MAN ECCV code's tables (CIFAR: identical to InfoPro's).</summary>
    [ChoiceName(SplitTables.Man)]
    Man,

    /// <summary>MAN++'s tables (ImageNet K=4).</summary>
    [ChoiceName(SplitTables.ManPlusPlus)]
    ManPlusPlus,

    /// <summary>InfoPro's ImageNet K=2 tables.</summary>
    [ChoiceName(SplitTables.InfoPro)]
    InfoPro,

    /// <summary>DGL's ImageNet tables.</summary>
    [ChoiceName(SplitTables.Dgl)]
    Dgl,

    /// <summary>Not a table: the balancing rule.</summary>
    [ChoiceName(SplitTables.Balanced)]
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

    /// <summary>Name of the reference table (see <see cref="SplitTables"/>), or null for a balanced split.</summary>
    public string? Table { get; }

    private SplitPlan(IReadOnlyList<Segment> segments, int unitCount, SplitSource source, string? table)
    {
        Segments = segments;
        UnitCount = unitCount;
        Source = source;
        Table = source == SplitSource.ReferencePreset ? table : null;
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
    public static SplitPlan FromSegmentEnds(IReadOnlyList<int> lastUnits, int unitCount, SplitSource source = SplitSource.Balanced,
        string? table = null)
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
        return new SplitPlan(segments, unitCount, source, table);
    }

    /// <summary>
    /// Splits <paramref name="network"/> into <paramref name="k"/> segments: with <paramref name="table"/> null, the
    /// default reference table for this architecture and K when one exists (<see cref="SplitTables.DefaultFor"/>),
    /// otherwise the balancing rule; with a table name (<c>man</c>, <c>manpp</c>, <c>infopro</c>, <c>dgl</c>), that
    /// table; with <c>balanced</c>, the balancing rule.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">K is below 1 or above the number of units.</exception>
    /// <exception cref="ArgumentException">The named table has no entry for this architecture and K.</exception>
    /// <param name="network">The network.</param>
    /// <param name="k">Number of segments.</param>
    /// <param name="table">A table name, <c>balanced</c>, or null for the default.</param>
    /// <param name="boundaryCost">
    /// For the balancing rule: the extra activation elements a segment ending after unit i keeps besides its units (its
    /// auxiliary head, MAN's copies); null counts units only.
    /// </param>
    /// <exception cref="InvalidOptionException">The table name is not one of <see cref="SplitTable"/>'s.</exception>
    public static SplitPlan Create(UnitChainNetwork network, int k, string? table = null, Func<int, double>? boundaryCost = null) =>
        Create(network, k, table is null ? null : Choices.Parse<SplitTable>(table, "The split table"), boundaryCost);

    /// <summary>Splits <paramref name="network"/> into <paramref name="k"/> segments by <paramref name="table"/> (null: the default).</summary>
    /// <exception cref="InvalidOptionException">K is below 1 or above the number of units, or the table has no entry here.</exception>
    public static SplitPlan Create(UnitChainNetwork network, int k, SplitTable? table, Func<int, double>? boundaryCost = null)
    {
        int units = network.Units.Count;
        if (k < 1 || k > units)
            throw new InvalidOptionException("K",
                $"K must be between 1 and {units} for {network.Architecture} ({units} units: the stem and {units - 1} blocks); got {k}.");
        var name = table is { } t ? Choices.Name(t) : null;
        SplitPlan Balance() => Balanced(network.UnitInfos.Select(u => (double)u.ActivationElements).ToArray(), k,
            boundaryCost is null || k == 1 ? null : Enumerable.Range(0, units - 1).Select(boundaryCost).ToArray());
        if (name == SplitTables.Balanced) return Balance();
        name ??= SplitTables.DefaultFor(network, k);
        if (name is null) return Balance();
        if (!SplitTables.TryGet(network, name, k, out var ends))
        {
            var available = SplitTables.Available(network, k).Append(SplitTables.Balanced);
            throw new InvalidOptionException("SplitTable",
                $"Split table '{name}' has no entry for {network.Architecture} at K={k}; available at this K: {string.Join(", ", available)}.");
        }
        return FromSegmentEnds(ends, units, SplitSource.ReferencePreset, name);
    }

    /// <summary>
    /// The balancing rule: among all ways to cut units with the given costs into <paramref name="k"/> contiguous
    /// segments, those with the smallest largest segment cost (the peak memory of local learning), and among them the
    /// one with the smallest sum of squared segment costs (the most even). Exact, by dynamic programming.
    /// </summary>
    /// <param name="unitCosts">Cost of each unit.</param>
    /// <param name="k">Number of segments.</param>
    /// <param name="boundaryCosts">Extra cost of a segment that ends after unit i (i &lt; n − 1; the last segment has
    /// none): its auxiliary head and MAN's copies. Null: none.</param>
    public static SplitPlan Balanced(IReadOnlyList<double> unitCosts, int k, IReadOnlyList<double>? boundaryCosts = null)
    {
        int n = unitCosts.Count;
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k), k, $"K must be between 1 and {n}.");
        if (boundaryCosts is not null && boundaryCosts.Count != n - 1)
            throw new ArgumentException($"One boundary cost per unit but the last is needed ({n - 1}, got {boundaryCosts.Count}).", nameof(boundaryCosts));
        var prefix = new double[n + 1];
        for (int i = 0; i < n; i++) prefix[i + 1] = prefix[i] + unitCosts[i];
        double Cost(int a, int b) => prefix[b] - prefix[a] + (b < n && boundaryCosts is not null ? boundaryCosts[b - 1] : 0); // units a..b-1

        // Phase 1: the smallest achievable peak. best[s, i] = min over splits of units 0..i-1 into s segments.
        var peak = Unreached(k, n);
        for (int s = 1; s <= k; s++)
            for (int i = s; i <= n; i++)
                for (int j = s - 1; j < i; j++)
                    peak[s, i] = Math.Min(peak[s, i], Math.Max(peak[s - 1, j], Cost(j, i)));
        double limit = peak[k, n] * (1 + 1e-12);

        // Phase 2: the most even split whose segments all stay within that peak.
        var squares = Unreached(k, n);
        var from = new int[k + 1, n + 1];
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

    // A dynamic-programming table over (segments, units) where only the empty split of no units is reached yet.
    private static double[,] Unreached(int k, int n)
    {
        var table = new double[k + 1, n + 1];
        for (int s = 0; s <= k; s++) for (int i = 0; i <= n; i++) table[s, i] = double.PositiveInfinity;
        table[0, 0] = 0;
        return table;
    }

    /// <summary>Describes the segments with unit names, for example <c>stem+layer1[0] | layer1[1..2] | ...</c>.</summary>
    public string Describe(UnitChainNetwork network)
    {
        string Name(int i) => network.UnitInfos[i].Name;
        return string.Join(" | ", Segments.Select(s => s.Length == 1 ? Name(s.Start) : $"{Name(s.Start)}..{Name(s.End - 1)}"));
    }
}

/// <summary>
/// The reference code's split tables, by name (docs/REFERENCE.md §1.2, §6): <c>man</c> (the MAN ECCV code; for
/// CIFAR ResNets also InfoPro's, which are the same), <c>manpp</c> (MAN++), <c>infopro</c> (InfoPro's ImageNet code),
/// <c>dgl</c> (DGL's ImageNet code). Entries are (stage, block) of each segment's last block, 1-based stages and 0-based
/// blocks as in the configs; (0, 0) means "the stem", which belongs to the first segment unless a table starts with it.
/// VGG entries are (0, unit index).
/// </summary>
internal static class SplitTables
{
    /// <summary>The MAN ECCV code's tables (CIFAR: identical to InfoPro's).</summary>
    public const string Man = "man";

    /// <summary>MAN++'s tables (ImageNet K=4).</summary>
    public const string ManPlusPlus = "manpp";

    /// <summary>InfoPro's ImageNet K=2 tables.</summary>
    public const string InfoPro = "infopro";

    /// <summary>DGL's ImageNet tables (VGG-13 block sizes 1 and 3, ResNet-152 K=2).</summary>
    public const string Dgl = "dgl";

    /// <summary>Not a table: the balancing rule.</summary>
    public const string Balanced = "balanced";

    private static readonly (int, int)[] CifarR32K4 = { (1, 2), (2, 1), (3, 0), (3, 4) };

    // CIFAR ResNets by blocks per stage (n = 5: ResNet-32, n = 18: ResNet-110).
    private static readonly Dictionary<(int BlocksPerStage, int K), (int Stage, int Block)[]> Cifar = new()
    {
        [(5, 2)] = new[] { (2, 1), (3, 4) },
        [(5, 3)] = new[] { (1, 4), (2, 4), (3, 4) },
        [(5, 4)] = CifarR32K4,
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

    private static readonly (int, int)[] LateK4 = { (3, 0), (3, 9), (3, 17), (4, 2) }; // MAN's first commit, all in layer3

    // ImageNet networks by (architecture, table, K).
    private static readonly Dictionary<(string Arch, string Table, int K), (int Stage, int Block)[]> ImageNet = new()
    {
        [("resnet34", Man, 2)] = new[] { (2, 0), (4, 2) },
        [("resnet34", Man, 4)] = new[] { (2, 0), (3, 0), (3, 5), (4, 2) },
        [("resnet101", Man, 2)] = new[] { (2, 0), (4, 2) },
        [("resnet101", Man, 4)] = LateK4,
        [("resnet101", ManPlusPlus, 4)] = new[] { (2, 2), (3, 8), (3, 16), (4, 2) },
        [("resnet101", InfoPro, 2)] = new[] { (2, 0), (4, 2) },
        [("resnet152", Man, 2)] = new[] { (2, 5), (4, 2) },
        [("resnet152", Man, 4)] = LateK4,
        [("resnet152", ManPlusPlus, 4)] = new[] { (2, 6), (3, 13), (3, 25), (4, 2) },
        [("resnet152", InfoPro, 2)] = new[] { (2, 5), (4, 2) },
        [("resnet152", Dgl, 2)] = new[] { (3, 13), (4, 2) },   // stem + 25 bottlenecks | the other 25
        [("resnext101_32x8d", Man, 2)] = new[] { (2, 0), (4, 2) },
        [("resnext101_32x8d", Man, 4)] = LateK4,
        [("resnext101_32x8d", ManPlusPlus, 4)] = new[] { (2, 2), (3, 8), (3, 16), (4, 2) },
        [("resnext101_32x8d", InfoPro, 2)] = new[] { (2, 2), (4, 2) },
        [("vgg13_bn", Dgl, 10)] = Enumerable.Range(0, 10).Select(u => (0, u)).ToArray(), // block size 1: one conv layer each
        [("vgg13_bn", Dgl, 4)] = new[] { (0, 2), (0, 5), (0, 8), (0, 9) },              // block size 3
    };

    /// <summary>
    /// The table used when none is named: the only one there is, or at K = 4 MAN++'s (the authors' published K=4;
    /// MAN's final code has none), otherwise MAN's; null when no table has this architecture and K.
    /// </summary>
    public static string? DefaultFor(UnitChainNetwork network, int k)
    {
        var order = k == 4 ? new[] { ManPlusPlus, Man, Dgl, InfoPro } : new[] { Man, ManPlusPlus, Dgl, InfoPro };
        return order.FirstOrDefault(name => TryGet(network, name, k, out _));
    }

    /// <summary>Names of the tables that have an entry for this architecture and K.</summary>
    public static IEnumerable<string> Available(UnitChainNetwork network, int k) =>
        new[] { Man, ManPlusPlus, InfoPro, Dgl }.Where(name => TryGet(network, name, k, out _));

    /// <summary>The indices of each segment's last unit in table <paramref name="table"/>, if it has this architecture and K.</summary>
    public static bool TryGet(UnitChainNetwork network, string table, int k, out int[] lastUnits)
    {
        lastUnits = Array.Empty<int>();
        (int Stage, int Block)[]? entries = null;
        if (network is CifarResNet cifar)
        {
            if (table is Man or InfoPro && Cifar.TryGetValue((cifar.BlocksPerStage, k), out var found)) entries = found;
            if (entries is null) return false;
            lastUnits = entries.Select(e => e.Stage == 0 ? 0 : 1 + (e.Stage - 1) * cifar.BlocksPerStage + e.Block).ToArray();
            return true;
        }
        if (!ImageNet.TryGetValue((network.Architecture, table, k), out entries)) return false;
        if (network is ImageNetResNet resnet)
            lastUnits = entries.Select(e => e.Stage == 0 ? 0 : 1 + resnet.BlocksPerStage.Take(e.Stage - 1).Sum() + e.Block).ToArray();
        else
            lastUnits = entries.Select(e => e.Block).ToArray();
        return true;
    }

    /// <summary>The raw CIFAR entries by (blocks per stage, K), for tests.</summary>
    internal static IReadOnlyDictionary<(int BlocksPerStage, int K), (int Stage, int Block)[]> CifarEntries => Cifar;

    /// <summary>The raw ImageNet entries by (architecture, table, K), for tests.</summary>
    internal static IReadOnlyDictionary<(string Arch, string Table, int K), (int Stage, int Block)[]> ImageNetEntries => ImageNet;

    private static IEnumerable<(int, int)> Stage(int stage, params int[] blocks) => blocks.Select(b => (stage, b));

    private static (int, int)[] EveryBlock(int n, bool stemAlone)
    {
        var list = new List<(int, int)>();
        if (stemAlone) list.Add((0, 0));
        for (int s = 1; s <= 3; s++) for (int b = 0; b < n; b++) list.Add((s, b));
        return list.ToArray();
    }
}
