// A process-wide typed choice that an environment variable may set: read and parsed on first use, settable in code
// after that (tests, the CLI's options). Read on hot paths (every convolution asks for its route), so a plain volatile
// int, no lock.
using System.Runtime.CompilerServices;

namespace Man.ML;

internal sealed class ProcessChoice<T>(string variable, string description, T fallback) where T : struct, Enum
{
    private int value = -1; // unset: read from the environment on first use

    /// <summary>The environment variable read on first use.</summary>
    public string Variable { get; } = variable;

    /// <summary>The choice: set in code, or the variable's value, or the fallback.</summary>
    /// <exception cref="InvalidOptionException">On first use, when the variable holds no choice of <typeparamref name="T"/>.</exception>
    public T Value
    {
        get
        {
            int current = Volatile.Read(ref value);
            if (current < 0)
            {
                var parsed = FromEnvironment();
                Interlocked.CompareExchange(ref value, Unsafe.As<T, int>(ref parsed), -1);
                current = Volatile.Read(ref value);
            }
            return Unsafe.As<int, T>(ref current);
        }
        set => Volatile.Write(ref this.value, Unsafe.As<T, int>(ref value));
    }

    private T FromEnvironment()
    {
        var text = Environment.GetEnvironmentVariable(Variable);
        if (string.IsNullOrWhiteSpace(text)) return fallback;
        try { return Choices.Parse<T>(text, description); }
        catch (InvalidOptionException e) { throw new InvalidOptionException(Variable, $"The environment variable {Variable}: {e.Message}"); }
    }
}
