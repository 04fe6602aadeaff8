namespace Man.ML.Tests;

/// <summary>The conventions of .editorconfig that a test can hold the code to.</summary>
[TestClass]
public sealed class StyleTests
{
    /// <summary>max_line_length in .editorconfig.</summary>
    private const int MaxLineLength = 160;

    private static readonly string[] Projects = { "Man.ML", "Man.ML.Samples", "Man.ML.Lab", "Man.ML.OnnxScoring", "Man.ML.Tests" };

    [TestMethod]
    public void TheEditorConfigSetsTheLimitThisTestChecks() =>
        StringAssert.Contains(File.ReadAllText(Path.Combine(TestSupport.RepositoryRoot, ".editorconfig")), $"max_line_length = {MaxLineLength}");

    [TestMethod]
    public void NoLineOfCodeIsLongerThanTheLimit()
    {
        var root = TestSupport.RepositoryRoot;
        var tooLong = new List<string>();
        foreach (var project in Projects)
        {
            var dir = Path.Combine(root, project);
            Assert.IsTrue(Directory.Exists(dir), dir);
            foreach (var file in Directory.EnumerateFiles(dir, "*.cs", SearchOption.AllDirectories).Where(f => !IsBuildOutput(root, f)).Order())
            {
                var lines = File.ReadAllLines(file);
                for (int i = 0; i < lines.Length; i++)
                    if (lines[i].Length > MaxLineLength)
                        tooLong.Add($"{Path.GetRelativePath(root, file)}:{i + 1}: {lines[i].Length} characters");
            }
        }
        Assert.AreEqual(0, tooLong.Count,
            $"{tooLong.Count} lines longer than {MaxLineLength} characters (.editorconfig):\n" + string.Join("\n", tooLong));
    }

    // bin/ and obj/ hold generated sources (AssemblyInfo, global usings), not code anyone wrote.
    private static bool IsBuildOutput(string root, string file) =>
        Path.GetRelativePath(root, file).Split(Path.DirectorySeparatorChar).Any(part => part is "bin" or "obj");
}
