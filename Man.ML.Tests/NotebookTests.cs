using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Man.ML.Tests;

/// <summary>
/// The notebooks of Man.ML.Samples/notebooks run headless with dotnet-repl (a local tool, .config/dotnet-tools.json), as
/// a newcomer would run them, and fail the test when a cell fails. They use this test run's build output (MANML_BIN)
/// instead of building Man.ML.Samples themselves.
/// </summary>
[TestClass]
public sealed class NotebookTests
{
    private static readonly string[] Expected = { "memory", "quickstart", "table1" };

    private static string NotebookFolder => Path.Combine(TestSupport.RepositoryRoot, "Man.ML.Samples", "notebooks");

    [ClassInitialize]
    public static void RestoreTools(TestContext _)
    {
        var r = TestSupport.Run("dotnet", new[] { "tool", "restore" }, TestSupport.RepositoryRoot, timeoutSeconds: 300);
        Assert.AreEqual(0, r.ExitCode, "dotnet tool restore failed:\n" + r.Stdout + r.Stderr);
    }

    private sealed record NotebookRun(string Text, int Images, TimeSpan Elapsed);

    /// <summary>Runs one notebook; returns the text of its outputs and the number of images it displayed.</summary>
    private static NotebookRun RunNotebook(string name)
    {
        var output = Path.Combine(TestSupport.NewTempFolder(), name + ".out.ipynb");
        var stopwatch = System.Diagnostics.Stopwatch.StartNew();
        var r = TestSupport.Run("dotnet", new[]
        {
            "tool", "run", "dotnet-repl", "--run", Path.Combine(NotebookFolder, name + ".ipynb"), "--exit-after-run", "--output-path", output,
        }, TestSupport.RepositoryRoot, new Dictionary<string, string> { ["MANML_BIN"] = AppContext.BaseDirectory }, timeoutSeconds: 900);
        stopwatch.Stop();
        Assert.IsTrue(File.Exists(output), $"dotnet-repl wrote no output notebook (exit code {r.ExitCode}):\n{r.Stdout}{r.Stderr}");
        using var notebook = JsonDocument.Parse(File.ReadAllText(output));
        var text = new StringBuilder();
        var errors = new List<string>();
        int images = 0, cell = 0;
        foreach (var c in notebook.RootElement.GetProperty("cells").EnumerateArray())
        {
            cell++;
            if (c.GetProperty("cell_type").GetString() != "code") continue;
            var outputs = c.GetProperty("outputs");
            foreach (var o in outputs.EnumerateArray())
            {
                switch (o.GetProperty("output_type").GetString())
                {
                    case "error":
                        errors.Add($"cell {cell}: {o.GetProperty("evalue").GetString()}");
                        break;
                    case "stream":
                        text.Append(Join(o.GetProperty("text")));
                        break;
                    default:
                        if (o.TryGetProperty("data", out var data) && data.TryGetProperty("text/html", out var html)
                            && Join(html).Contains("data:image/png;base64,", StringComparison.Ordinal)) images++;
                        break;
                }
            }
        }
        Assert.AreEqual(0, errors.Count, $"{name}.ipynb: a cell failed:\n" + string.Join("\n", errors));
        Assert.AreEqual(0, r.ExitCode, $"dotnet-repl exited with {r.ExitCode} on {name}.ipynb:\n{r.Stdout}{r.Stderr}");
        Console.WriteLine($"{name}.ipynb ran in {stopwatch.Elapsed.TotalSeconds:F0} s:\n{text}");
        Directory.Delete(Path.GetDirectoryName(output)!, true);   // kept only when the run failed
        return new NotebookRun(text.ToString(), images, stopwatch.Elapsed);
    }

    private static string Join(JsonElement lines) =>
        lines.ValueKind == JsonValueKind.Array ? string.Concat(lines.EnumerateArray().Select(l => l.GetString())) : lines.GetString() ?? "";

    [TestMethod]
    public void EveryNotebookIsCommittedWithItsOutputsClearedAndIsTested()
    {
        var found = Directory.GetFiles(NotebookFolder, "*.ipynb").Select(Path.GetFileNameWithoutExtension).Order(StringComparer.Ordinal).ToArray();
        CollectionAssert.AreEqual(Expected, found, "each notebook needs a test here");
        foreach (var name in found)
        {
            using var notebook = JsonDocument.Parse(File.ReadAllText(Path.Combine(NotebookFolder, name + ".ipynb")));
            foreach (var c in notebook.RootElement.GetProperty("cells").EnumerateArray().Where(c => c.GetProperty("cell_type").GetString() == "code"))
            {
                Assert.AreEqual(0, c.GetProperty("outputs").GetArrayLength(), $"{name}.ipynb is committed with outputs");
                Assert.AreEqual(JsonValueKind.Null, c.GetProperty("execution_count").ValueKind, $"{name}.ipynb is committed with execution counts");
            }
        }
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void QuickstartTrainsThroughMLNetEvaluatesPlotsPerClassAccuracyAndRoundTripsTheModel()
    {
        var run = RunNotebook("quickstart");
        StringAssert.Contains(run.Text, "1000 training and 200 validation images of 10 classes");
        StringAssert.Contains(run.Text, "epoch 6: train loss");
        var accuracy = Regex.Match(run.Text, @"micro-accuracy ([\d.]+) %");
        Assert.IsTrue(accuracy.Success, "no micro-accuracy printed");
        Assert.IsTrue(double.Parse(accuracy.Groups[1].Value, CultureInfo.InvariantCulture) > 15,
            $"micro-accuracy {accuracy.Groups[1].Value} % is no better than chance (10 %)");
        Assert.AreEqual(10, Regex.Matches(run.Text, @"^\S+\s+[\d.]+ %$", RegexOptions.Multiline).Count, "one accuracy line per class");
        StringAssert.Contains(run.Text, "saved and reloaded");
        StringAssert.Matches(run.Text, new Regex(@"\(a (\w+)\): predicted (\w+) with probability"));
        Assert.AreEqual(1, run.Images, "the per-class accuracy plot");
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void Table1NotebookTrainsE2EDglAndDglManAndPlotsTheirErrors()
    {
        var run = RunNotebook("table1");
        foreach (var method in new[] { "E2E", "DGL", "DGL + MAN" })
        {
            var row = Regex.Match(run.Text, $@"^{Regex.Escape(method)}\s+([\d.]+)%\s+[\d.]+%\s+([\d.]+)\s+(\d+)\s+([\d,]+)$", RegexOptions.Multiline);
            Assert.IsTrue(row.Success, $"no table row for {method}");
            var error = double.Parse(row.Groups[1].Value, CultureInfo.InvariantCulture);
            Assert.IsTrue(error is >= 0 and <= 100, $"{method}: validation error {error} %");
            var auxiliary = long.Parse(row.Groups[4].Value.Replace(",", ""), CultureInfo.InvariantCulture);
            Assert.AreEqual(method == "E2E", auxiliary == 0, $"{method}: {auxiliary} auxiliary parameters");
        }
        StringAssert.Contains(run.Text, "DGL + MAN  epoch 2:");
        Assert.AreEqual(1, run.Images, "the error plot");
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void MemoryNotebookMeasuresPeakMemoryAgainstKAndPlotsIt()
    {
        var run = RunNotebook("memory");
        var rows = Regex.Matches(run.Text, @"^\s*(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", RegexOptions.Multiline)
            .ToDictionary(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture),
                m => (Dgl: double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture),
                      DglMan: double.Parse(m.Groups[4].Value, CultureInfo.InvariantCulture)));
        CollectionAssert.AreEqual(new[] { 1, 2, 4, 8, 16 }, rows.Keys.Order().ToArray(), "one row per K");
        double e2e = rows[1].Dgl;
        Assert.IsTrue(e2e > 50, $"the end-to-end peak ({e2e} MiB) is implausibly small");
        Assert.IsTrue(rows[16].Dgl <= 0.6 * e2e, $"DGL K=16 peak {rows[16].Dgl} MiB is more than 0.6 x the K=1 peak {e2e} MiB");
        Assert.IsTrue(rows[16].DglMan < e2e, $"DGL + MAN K=16 peak {rows[16].DglMan} MiB is not below the K=1 peak {e2e} MiB");
        Assert.IsTrue(rows[16].DglMan > rows[16].Dgl, "MAN's copies add activations of their own");
        Assert.AreEqual(1, run.Images, "the memory plot");
    }
}
