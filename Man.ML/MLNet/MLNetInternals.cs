// The few places where ML.NET (6.0.0, as 5.0.1 before it) keeps from third-party components what its own trainers use: the environment
// behind a catalog (for logging through MLContext.Log), the environment's cancellation flag, and SchemaShape.Column's
// constructor (docs/PLATFORM.md §ML.NET). Reached by reflection, each with a clear error should ML.NET change.
using System.Reflection;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Runtime;

namespace Man.ML.MLNet;

internal static class MLNetInternals
{
    /// <summary>The host environment (the MLContext) behind an ML.NET catalog object.</summary>
    public static IHostEnvironment GetEnvironment(object catalog)
    {
        for (var type = catalog.GetType(); type is not null; type = type.BaseType)
        {
            foreach (var property in type.GetProperties(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic))
                if (typeof(IHostEnvironment).IsAssignableFrom(property.PropertyType) && property.GetIndexParameters().Length == 0
                    && property.GetValue(catalog) is IHostEnvironment env)
                    return env;
        }
        foreach (var iface in catalog.GetType().GetInterfaces())
        {
            var property = iface.GetProperty("Environment");
            if (property is not null && property.GetValue(catalog) is IHostEnvironment env) return env;
        }
        throw new NotSupportedException($"Cannot find the MLContext behind {catalog.GetType().Name}; this Man.ML was built against ML.NET 6.0.0.");
    }

    /// <summary>Whether ML.NET's internal cancellation (MLContext.CancelExecution) was requested on this host.</summary>
    public static bool IsCanceled(object host)
    {
        var cancelable = host.GetType().GetInterfaces().FirstOrDefault(i => i.Name == "ICancelable");
        var property = cancelable?.GetProperty("IsCanceled");
        return property?.GetValue(host) is true;
    }

    private static readonly ConstructorInfo? ColumnConstructor = typeof(SchemaShape.Column)
        .GetConstructors(BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public)
        .FirstOrDefault(c => c.GetParameters().Length == 5);

    /// <summary>Builds a <see cref="SchemaShape.Column"/> (whose constructor ML.NET keeps internal).</summary>
    public static SchemaShape.Column Column(string name, SchemaShape.Column.VectorKind kind, DataViewType itemType, bool isKey,
        SchemaShape? annotations = null)
    {
        if (ColumnConstructor is null)
            throw new NotSupportedException("SchemaShape.Column cannot be constructed; this Man.ML was built against ML.NET 6.0.0.");
        return (SchemaShape.Column)ColumnConstructor.Invoke(new object?[] { name, kind, itemType, isKey, annotations });
    }
}
