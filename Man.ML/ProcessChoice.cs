// A typed default that an environment variable may set: read and parsed once, on first use, and never changed after
// that. It is only a default: what a network or a run uses is chosen when it is built (and carried by it), so nothing
// in the process can change the choice behind another's back.
namespace Man.ML;

internal sealed class ProcessChoice<T>(string variable, string description, T fallback) where T : struct, Enum
{
    private readonly Lazy<T> value = new(() => FromEnvironment(variable, description, fallback), LazyThreadSafetyMode.PublicationOnly);

    /// <summary>The environment variable read on first use.</summary>
    public string Variable { get; } = variable;

    /// <summary>The variable's value, or the fallback when it is unset or blank.</summary>
    /// <exception cref="InvalidOptionException">When the variable holds no choice of <typeparamref name="T"/> (on every read).</exception>
    public T Value => value.Value;

    private static T FromEnvironment(string variable, string description, T fallback)
    {
        var text = Environment.GetEnvironmentVariable(variable);
        if (string.IsNullOrWhiteSpace(text)) return fallback;
        try { return Choices.Parse<T>(text, description); }
        catch (InvalidOptionException e) { throw new InvalidOptionException(variable, $"The environment variable {variable}: {e.Message}"); }
    }
}
