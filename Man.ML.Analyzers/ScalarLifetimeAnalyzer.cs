// TorchSharp 0.107 hands a Scalar to libtorch as a bare handle and nothing keeps the managed object alive during the
// native call; its finalizer deletes the native object. A Scalar nobody holds (one made by an implicit conversion, or
// the alpha of 1 that Tensor.add(x) makes inside TorchSharp, a number operand of a Tensor operator) can be finalized by a collection on another
// thread while libtorch still reads it (docs/BACKEND.md). These rules make each such site in Man.ML a build error, so
// every Scalar the library passes is held in a variable (or a static field) that outlives the call.
using System.Collections.Immutable;
using System.Linq;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Diagnostics;
using Microsoft.CodeAnalysis.Operations;

namespace Man.ML.Analyzers;

/// <summary>Reports Scalars passed to TorchSharp that no variable keeps alive.</summary>
[DiagnosticAnalyzer(LanguageNames.CSharp)]
public sealed class ScalarLifetimeAnalyzer : DiagnosticAnalyzer
{
    private const string Why = "TorchSharp does not keep a Scalar alive while libtorch reads it, and its finalizer frees it (docs/BACKEND.md)";

    /// <summary>A number converted to a Scalar where it is passed.</summary>
    public static readonly DiagnosticDescriptor ConvertedScalar = new(
        "MANML0001", "Scalar made where it is passed",
        "'{0}' becomes a TorchSharp Scalar that nothing holds: " + Why + "; hold it in a 'using var s = value.ToScalar();' or a static field",
        "Reliability", DiagnosticSeverity.Error, isEnabledByDefault: true);

    /// <summary>An addition or subtraction whose hidden alpha Scalar TorchSharp makes and drops.</summary>
    public static readonly DiagnosticDescriptor HiddenAlpha = new(
        "MANML0002", "Tensor addition with a hidden alpha Scalar",
        "'{0}' makes an alpha Scalar of 1 inside TorchSharp that nothing holds: " + Why + "; pass the alpha (Scalars.One) explicitly",
        "Reliability", DiagnosticSeverity.Error, isEnabledByDefault: true);

    /// <summary>A Tensor operator with a number operand, which TorchSharp converts to a Scalar and drops.</summary>
    public static readonly DiagnosticDescriptor HiddenScalar = new(
        "MANML0003", "Tensor operator with a number operand",
        "'{0}' converts its number to a Scalar inside TorchSharp that nothing holds: " + Why + "; hold the Scalar ('using var s = value.ToScalar();') and call mul/div/add with it",
        "Reliability", DiagnosticSeverity.Error, isEnabledByDefault: true);

    /// <inheritdoc />
    public override ImmutableArray<DiagnosticDescriptor> SupportedDiagnostics => ImmutableArray.Create(ConvertedScalar, HiddenAlpha, HiddenScalar);

    /// <inheritdoc />
    public override void Initialize(AnalysisContext context)
    {
        context.ConfigureGeneratedCodeAnalysis(GeneratedCodeAnalysisFlags.None);
        context.EnableConcurrentExecution();
        context.RegisterCompilationStartAction(start =>
        {
            var scalar = start.Compilation.GetTypeByMetadataName("TorchSharp.Scalar");
            var tensor = start.Compilation.GetTypeByMetadataName("TorchSharp.torch+Tensor");
            if (scalar is null || tensor is null) return;
            start.RegisterOperationAction(c => OnConversion(c, scalar), OperationKind.Conversion);
            start.RegisterOperationAction(c => OnInvocation(c, tensor), OperationKind.Invocation);
            start.RegisterOperationAction(c => OnBinary(c, tensor), OperationKind.Binary, OperationKind.CompoundAssignment);
        });
    }

    private static void OnConversion(OperationAnalysisContext context, INamedTypeSymbol scalar)
    {
        var conversion = (IConversionOperation)context.Operation;
        if (conversion.OperatorMethod is { } method && SymbolEqualityComparer.Default.Equals(method.ContainingType, scalar)
            && SymbolEqualityComparer.Default.Equals(conversion.Type, scalar))
            context.ReportDiagnostic(Diagnostic.Create(ConvertedScalar, conversion.Syntax.GetLocation(), conversion.Operand.Syntax.ToString()));
    }

    // Tensor.add(x) and add_(x) with no alpha: TorchSharp calls its two-argument form with a new Scalar of 1. (sub has no alpha.)
    private static void OnInvocation(OperationAnalysisContext context, INamedTypeSymbol tensor)
    {
        var invocation = (IInvocationOperation)context.Operation;
        var method = invocation.TargetMethod;
        if (!SymbolEqualityComparer.Default.Equals(method.ContainingType, tensor)) return;
        if (method.Name is not ("add" or "add_")) return;
        if (method.Parameters.Length == 1)
            context.ReportDiagnostic(Diagnostic.Create(HiddenAlpha, invocation.Syntax.GetLocation(), invocation.Syntax.ToString()));
    }

    // Tensor operators: a + b calls add(x), which makes the alpha; an operator with a number on one side
    // (x * 0.5, 1 - x, x / 255f) converts the number to a Scalar inside TorchSharp.
    private static void OnBinary(OperationAnalysisContext context, INamedTypeSymbol tensor)
    {
        var method = context.Operation switch
        {
            IBinaryOperation b => b.OperatorMethod,
            ICompoundAssignmentOperation c => c.OperatorMethod,
            _ => null,
        };
        if (method is null || !SymbolEqualityComparer.Default.Equals(method.ContainingType, tensor)) return;
        var number = method.Parameters.FirstOrDefault(p => p.Type.SpecialType is SpecialType.System_Double or SpecialType.System_Single
            or SpecialType.System_Int32 or SpecialType.System_Int64);
        var syntax = context.Operation.Syntax;
        if (number is not null)
            context.ReportDiagnostic(Diagnostic.Create(HiddenScalar, syntax.GetLocation(), syntax.ToString()));
        else if (method.Name is "op_Addition")
            context.ReportDiagnostic(Diagnostic.Create(HiddenAlpha, syntax.GetLocation(), syntax.ToString()));
    }
}
