// Every typed choice of a run (rule, split table, MAN ablation, head kinds, policies) has one name, written once as
// a [ChoiceName] on its enum member. The same table parses the CLI, the ML.NET options and checkpoints and prints
// metrics.json, logs and messages, so a name cannot be spelt two ways.
using System.Collections.Concurrent;
using System.Reflection;

namespace Man.ML;

/// <summary>The name of an enum member on the command line, in metrics.json and in the ML.NET options.</summary>
/// <param name="name">The name, lower case (for example <c>ema-only</c>).</param>
[AttributeUsage(AttributeTargets.Field)]
internal sealed class ChoiceNameAttribute(string name) : Attribute
{
    /// <summary>The name.</summary>
    public string Name { get; } = name;
}

/// <summary>
/// A value given for an option is invalid: unknown, out of range, or incompatible with another option. The message is
/// meant for the user as it stands (front ends print it without a stack trace); <see cref="Option"/> names the option.
/// </summary>
public sealed class InvalidOptionException : ArgumentException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="option">The option, as the front end that raised it names it (for example <c>K</c> or <c>--rule</c>).</param>
    /// <param name="message">What is wrong and what is accepted.</param>
    public InvalidOptionException(string option, string message) : base(message) => Option = option;

    /// <summary>The option that is wrong.</summary>
    public string Option { get; }
}

/// <summary>Parses and prints typed choices by their <see cref="ChoiceNameAttribute"/> names.</summary>
internal static class Choices
{
    private static readonly ConcurrentDictionary<Type, (Enum Value, string Name)[]> Tables = new();

    private static (Enum Value, string Name)[] Table(Type type) => Tables.GetOrAdd(type, t =>
        t.GetFields(BindingFlags.Public | BindingFlags.Static)
            .Select(f => ((Enum)f.GetValue(null)!, f.GetCustomAttribute<ChoiceNameAttribute>()?.Name
                ?? throw new InvalidOperationException($"{t.Name}.{f.Name} has no [ChoiceName].")))
            .ToArray());

    /// <summary>The name of <paramref name="value"/>.</summary>
    public static string Name<T>(T value) where T : struct, Enum
    {
        foreach (var (v, name) in Table(typeof(T)))
            if (v.Equals(value)) return name;
        throw new ArgumentOutOfRangeException(nameof(value), value, $"Not a {typeof(T).Name}.");
    }

    /// <summary>Every name of <typeparamref name="T"/>, in declaration order.</summary>
    public static IReadOnlyList<string> Names<T>() where T : struct, Enum => Table(typeof(T)).Select(e => e.Name).ToArray();

    /// <summary>
    /// The member called <paramref name="text"/>: its choice name or its C# name, ignoring case (so <c>InfoPro</c>,
    /// <c>infopro</c> and <c>INFOPRO</c> are one rule).
    /// </summary>
    /// <exception cref="InvalidOptionException">No member has that name; the message lists the names.</exception>
    public static T Parse<T>(string text, string option) where T : struct, Enum =>
        TryParse<T>(text, out var value) ? value
            : throw new InvalidOptionException(option, $"{option} '{text}' is not one of: {string.Join(", ", Names<T>())}.");

    /// <summary>Like <see cref="Parse{T}"/>, without throwing.</summary>
    public static bool TryParse<T>(string? text, out T value) where T : struct, Enum
    {
        var wanted = text?.Trim() ?? "";
        foreach (var (v, name) in Table(typeof(T)))
            if (string.Equals(name, wanted, StringComparison.OrdinalIgnoreCase) || string.Equals(v.ToString(), wanted, StringComparison.OrdinalIgnoreCase))
            {
                value = (T)v;
                return true;
            }
        value = default;
        return false;
    }
}
