using System.Collections.Immutable;
using Man.ML.Analyzers;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.Diagnostics;

namespace Man.ML.Tests;

/// <summary>
/// The build rules that keep TorchSharp's Scalars alive through the native calls that read them (docs/BACKEND.md):
/// each unsafe form is reported, and the held forms Man.ML uses instead are not.
/// </summary>
[TestClass]
public sealed class ScalarLifetimeAnalyzerTests
{
    private static string[] Diagnose(string body)
    {
        var source = $$"""
            using TorchSharp;
            using static TorchSharp.torch;
            static class Snippet
            {
                static readonly Scalar One = 1L.ToScalar();
                static Tensor Run(Tensor a, Tensor b, double v)
                {
                    {{body}}
                }
            }
            """;
        var references = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator)
            .Append(typeof(TorchSharp.Scalar).Assembly.Location)
            .Select(p => MetadataReference.CreateFromFile(p));
        var compilation = CSharpCompilation.Create("Snippet", new[] { CSharpSyntaxTree.ParseText(source) }, references,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary));
        var errors = compilation.GetDiagnostics().Where(d => d.Severity == DiagnosticSeverity.Error).ToList();
        Assert.AreEqual(0, errors.Count, "the snippet does not compile: " + string.Join("; ", errors));
        var analyzed = compilation.WithAnalyzers(ImmutableArray.Create<DiagnosticAnalyzer>(new ScalarLifetimeAnalyzer()));
        return analyzed.GetAnalyzerDiagnosticsAsync().Result.Select(d => d.Id).OrderBy(id => id).ToArray();
    }

    [TestMethod]
    [DataRow("return a.mul(0.5);", "MANML0001")]                     // implicit double → Scalar
    [DataRow("return a.clamp(0, 1);", "MANML0001,MANML0001")]
    [DataRow("return a.add(b);", "MANML0002")]                       // alpha made inside TorchSharp
    [DataRow("return a.add_(b);", "MANML0002")]
    [DataRow("return a + b;", "MANML0002")]
    [DataRow("return a * 0.5;", "MANML0003")]                        // the number becomes a Scalar inside the operator
    [DataRow("return 1 - a;", "MANML0003")]
    [DataRow("return a / v;", "MANML0003")]
    public void EachFormThatDropsAScalarIsReported(string body, string expected) =>
        CollectionAssert.AreEqual(expected.Split(','), Diagnose(body), body);

    [TestMethod]
    [DataRow("using var s = v.ToScalar(); return a.mul(s);")]
    [DataRow("return a.add(b, One);")]
    [DataRow("return a - b;")]                                        // sub(Tensor) takes no Scalar
    [DataRow("return a * b;")]
    [DataRow("using var s = v.ToScalar(); return a.add_(s, One);")]
    public void HeldScalarsAreNotReported(string body) =>
        CollectionAssert.AreEqual(Array.Empty<string>(), Diagnose(body), body);
}
