using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.Json;
using System.Xml.Linq;

namespace Man.ML.Tests;

/// <summary>
/// The NuGet package as a consumer gets it: `dotnet pack` of Man.ML (the build `dotnet test` just made), its contents,
/// and an application outside the solution (nuget/consumer-check) that restores it from a local folder with the CPU
/// backend, trains, saves, loads and predicts.
/// </summary>
/// <remarks>The package is packed with a version of its own (0.1.0-check.cXXXXXXXX: the letter keeps the identifier
/// alphanumeric, since an all-digit one with a leading zero is not valid SemVer) and the consumer restores into a
/// private packages folder, with the machine's global packages folder only as a read-only fallback for everything
/// else, so a Man.ML 0.1.0 cached by an earlier restore can never stand in for the package under test.</remarks>
[TestClass]
public sealed class PackageTests
{
    private static string work = "";
    private static string feed = "";
    private static string version = "";

    private static string Nupkg => Path.Combine(feed, $"Man.ML.{version}.nupkg");
    private static string Snupkg => Path.Combine(feed, $"Man.ML.{version}.snupkg");

    [ClassInitialize]
    public static void Pack(TestContext _)
    {
        work = TestSupport.NewTempFolder();
        feed = Path.Combine(work, "feed");
        var assemblyVersion = typeof(Man.ML.Training.Trainer).Assembly.GetName().Version!;
        version = $"{assemblyVersion.Major}.{assemblyVersion.Minor}.{assemblyVersion.Build}-check.c{Guid.NewGuid().ToString("N")[..8]}";
        var r = TestSupport.Run("dotnet", new[]
        {
            "pack", Path.Combine(TestSupport.RepositoryRoot, "Man.ML", "Man.ML.csproj"), "-c", TestSupport.Configuration, "--no-build",
            "--disable-build-servers", "-o", feed, $"-p:PackageVersion={version}",
        }, timeoutSeconds: 180);
        Assert.AreEqual(0, r.ExitCode, "dotnet pack failed:\n" + r.Stdout + r.Stderr);
        Assert.IsTrue(File.Exists(Nupkg), $"dotnet pack wrote no {Nupkg}:\n{r.Stdout}");
        Console.WriteLine($"{Path.GetFileName(Nupkg)}: {new FileInfo(Nupkg).Length} bytes; {Path.GetFileName(Snupkg)}: {new FileInfo(Snupkg).Length} bytes");
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        if (Directory.Exists(work)) Directory.Delete(work, true);
    }

    private static string Entry(ZipArchive zip, string name)
    {
        var entry = zip.GetEntry(name);
        Assert.IsNotNull(entry, $"the package has no {name}; it holds: {string.Join(", ", zip.Entries.Select(e => e.FullName))}");
        using var reader = new StreamReader(entry.Open(), Encoding.UTF8);
        return reader.ReadToEnd();
    }

    [TestMethod]
    public void ThePackageHasItsMetadataReadmeAndOnlyTheManagedTorchSharp()
    {
        using var zip = ZipFile.OpenRead(Nupkg);
        var nuspec = XDocument.Parse(Entry(zip, "Man.ML.nuspec"));
        XNamespace ns = nuspec.Root!.Name.Namespace;
        var metadata = nuspec.Root.Element(ns + "metadata")!;
        string Meta(string name) => metadata.Element(ns + name)?.Value ?? "";

        Assert.AreEqual("Man.ML", Meta("id"));
        Assert.AreEqual(version, Meta("version"));
        var license = metadata.Element(ns + "license")!;
        Assert.AreEqual("expression", license.Attribute("type")!.Value);
        Assert.AreEqual("MIT", license.Value);
        Assert.AreEqual("README.md", Meta("readme"));
        StringAssert.Contains(Meta("description"), "Momentum Auxiliary Network");
        foreach (var tag in new[] { "TorchSharp", "ML.NET", "local-learning" }) StringAssert.Contains(Meta("tags"), tag);
        var repository = metadata.Element(ns + "repository");
        Assert.IsNotNull(repository, "no repository metadata");
        Assert.AreEqual("git", repository.Attribute("type")!.Value);
        StringAssert.Matches(repository.Attribute("commit")?.Value ?? "", new System.Text.RegularExpressions.Regex("^[0-9a-f]{40}$"));

        var dependencies = metadata.Descendants(ns + "dependency").Select(d => d.Attribute("id")!.Value).ToList();
        CollectionAssert.Contains(dependencies, "TorchSharp");
        var native = dependencies.Where(d => d.StartsWith("TorchSharp-", StringComparison.OrdinalIgnoreCase)
            || d.StartsWith("libtorch", StringComparison.OrdinalIgnoreCase)).ToList();
        Assert.AreEqual(0, native.Count, "the package must leave the native backend to the application: " + string.Join(", ", native));

        var readme = Entry(zip, "README.md");
        Assert.AreEqual(File.ReadAllText(Path.Combine(TestSupport.RepositoryRoot, "nuget", "PACKAGE.md")), readme);
        foreach (var backend in new[] { "TorchSharp-cpu", "libtorch-cpu-linux-x64", "TorchSharp-cuda-windows", "TorchSharp-cuda-linux" })
            StringAssert.Contains(readme, backend);
        Assert.AreEqual(File.ReadAllText(Path.Combine(TestSupport.RepositoryRoot, "build", "LibTorchSharpPatch.targets")),
            Entry(zip, "buildTransitive/Man.ML.targets"), "the package's Debian 12 fix must be the repository's build step");
        Assert.IsNotNull(zip.GetEntry("lib/net10.0/Man.ML.dll"));

        using var symbols = ZipFile.OpenRead(Snupkg);
        Assert.IsNotNull(symbols.GetEntry("lib/net10.0/Man.ML.pdb"), "the symbols package has no Man.ML.pdb");
    }

    // Records whose positional parameters (hence their public properties) have no <param> text yet. The compiler does not
    // flag these (CS1591 covers declared members only); they live in Man.ML's sources, which the public-API pass owns.
    // The list may only shrink: a record missing from it fails the test below.
    private static readonly HashSet<string> RecordsWithUndocumentedParameters = new()
    {
        "Man.ML.Data.DatasetKind", "Man.ML.Data.Normalization", "Man.ML.Diagnostics.TrainingCostReport",
        "Man.ML.Local.InfoProLambdas", "Man.ML.Local.Segment", "Man.ML.Models.FeatureShape", "Man.ML.Training.BatchProgress",
        "Man.ML.Training.TrainingResult",
    };

    [TestMethod]
    public void ThePackageDocumentsEveryPublicTypeAndMember()
    {
        using var zip = ZipFile.OpenRead(Nupkg);
        var members = XDocument.Parse(Entry(zip, "lib/net10.0/Man.ML.xml")).Descendants("member")
            .ToDictionary(m => m.Attribute("name")!.Value);
        // Documented: text of its own, or <inheritdoc/> (the base member's or interface member's documentation).
        bool Documented(string id) => members.TryGetValue(id, out var m)
            && (m.Elements().Any(e => e.Value.Trim().Length > 0) || m.Element("inheritdoc") is not null);
        var assembly = typeof(Man.ML.Training.Trainer).Assembly;
        var missing = new List<string>();
        var recordGaps = new SortedSet<string>();
        int checkedCount = 0;
        foreach (var type in assembly.GetExportedTypes())
        {
            checkedCount++;
            var typeId = "T:" + XmlName(type);
            if (!Documented(typeId)) missing.Add(typeId);
            if (typeof(Delegate).IsAssignableFrom(type)) continue;
            // record class or struct
            bool isRecord = type.GetMethod("PrintMembers", BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance) is not null;
            var primary = isRecord ? type.GetConstructors().Where(c => !c.GetParameters().Any(p => p.ParameterType == type))
                .OrderByDescending(c => c.GetParameters().Length).FirstOrDefault() : null;
            var typeParams = members.TryGetValue(typeId, out var typeDoc)
                ? typeDoc.Elements("param").Where(e => e.Value.Trim().Length > 0).Select(e => e.Attribute("name")!.Value).ToHashSet()
                : new HashSet<string>();
            foreach (var member in type.GetMembers(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly))
            {
                if (member is MethodInfo { IsSpecialName: true } || member is Type) continue;          // accessors; nested types are listed on their own
                if (member.IsDefined(typeof(System.Runtime.CompilerServices.CompilerGeneratedAttribute))) continue;
                if (type.IsEnum && member.Name == "value__") continue;
                // What the compiler writes for a record (equality, printing, cloning, deconstruction) has no source to document.
                if (isRecord && member is MethodInfo && member.Name is "ToString" or "Equals" or "GetHashCode" or "PrintMembers"
                    or "Deconstruct" or "op_Equality" or "op_Inequality" or "<Clone>$") continue;
                var id = MemberId(member);
                if (id is null) continue;
                // An implicit parameterless constructor has no source either: the type then declares no constructor at all.
                if (member is ConstructorInfo { IsStatic: false } c && c.GetParameters().Length == 0 && !Documented(id)
                    && !members.Keys.Any(k => k.StartsWith($"M:{XmlName(type)}.#ctor", StringComparison.Ordinal))) continue;
                checkedCount++;
                if (Documented(id)) continue;
                // A positional record's property is documented by the record's <param> of the same name.
                if (member is PropertyInfo && primary is not null && primary.GetParameters().Any(p => p.Name == member.Name))
                {
                    if (typeParams.Contains(member.Name)) continue;
                    recordGaps.Add(XmlName(type));
                    if (RecordsWithUndocumentedParameters.Contains(XmlName(type))) continue;
                }
                missing.Add(id);
            }
        }
        Console.WriteLine($"{checkedCount} public types and members checked; records whose parameters have no <param> text yet: "
            + (recordGaps.Count == 0 ? "none" : string.Join(", ", recordGaps)));
        Assert.AreEqual(0, missing.Count, "undocumented in the package's Man.ML.xml:\n" + string.Join("\n", missing));
    }

    private static string XmlName(Type type) => (type.FullName ?? type.Name).Replace('+', '.');

    private static string? MemberId(MemberInfo member)
    {
        var owner = XmlName(member.DeclaringType!);
        string Parameters(ParameterInfo[] ps) => ps.Length == 0 ? "" : "(" + string.Join(",", ps.Select(p => ParameterName(p.ParameterType))) + ")";
        return member switch
        {
            ConstructorInfo c => $"M:{owner}.#ctor{Parameters(c.GetParameters())}",
            MethodInfo m => $"M:{owner}.{m.Name}{(m.IsGenericMethodDefinition ? "``" + m.GetGenericArguments().Length : "")}{Parameters(m.GetParameters())}"
                + (m.Name is "op_Implicit" or "op_Explicit" ? "~" + ParameterName(m.ReturnType) : ""),
            PropertyInfo p => $"P:{owner}.{p.Name}{Parameters(p.GetIndexParameters())}",
            FieldInfo f => $"F:{owner}.{f.Name}",
            EventInfo e => $"E:{owner}.{e.Name}",
            _ => null,
        };
    }

    // The documentation-comment ID of a parameter type (ECMA-334 annex D): generic arguments in braces, by-ref as @,
    // a method's generic parameters as ``n, a type's as `n.
    private static string ParameterName(Type t)
    {
        if (t.IsByRef) return ParameterName(t.GetElementType()!) + "@";
        if (t.IsArray) return ParameterName(t.GetElementType()!) + "[" + new string(',', t.GetArrayRank() - 1) + "]";
        if (t.IsPointer) return ParameterName(t.GetElementType()!) + "*";
        if (t.IsGenericMethodParameter) return "``" + t.GenericParameterPosition;
        if (t.IsGenericParameter) return "`" + t.GenericParameterPosition;
        if (t.IsGenericType)
        {
            var definition = t.GetGenericTypeDefinition().FullName!;
            var name = definition[..definition.IndexOf('`')].Replace('+', '.');
            return name + "{" + string.Join(",", t.GetGenericArguments().Select(ParameterName)) + "}";
        }
        return (t.FullName ?? t.Name).Replace('+', '.');
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void AnApplicationOutsideTheSolutionTrainsSavesLoadsAndPredictsWithThePackage()
    {
        // The consumer: a copy of nuget/consumer-check in a folder of its own, with the feed as an extra package source.
        var consumer = Path.Combine(work, "consumer");
        var template = Path.Combine(TestSupport.RepositoryRoot, "nuget", "consumer-check");
        Directory.CreateDirectory(consumer);
        foreach (var file in Directory.GetFiles(template)) File.Copy(file, Path.Combine(consumer, Path.GetFileName(file)));
        File.WriteAllText(Path.Combine(consumer, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <add key="man-ml-under-test" value="{feed}" />
              </packageSources>
            </configuration>
            """);
        var packages = Path.Combine(work, "packages");
        var global = GlobalPackagesFolder();

        var restore = TestSupport.Run("dotnet", new[]
        {
            "restore", "--disable-build-servers", $"-p:ManMLVersion={version}", $"-p:RestorePackagesPath={packages}",
            $"-p:RestoreFallbackFolders={global}",
        }, consumer, timeoutSeconds: 300);
        Assert.AreEqual(0, restore.ExitCode, "restore failed:\n" + restore.Stdout + restore.Stderr);
        using (var assets = JsonDocument.Parse(File.ReadAllText(Path.Combine(consumer, "obj", "project.assets.json"))))
        {
            var libraries = assets.RootElement.GetProperty("libraries").EnumerateObject().Select(p => p.Name).ToList();
            CollectionAssert.Contains(libraries, $"Man.ML/{version}");
            Assert.IsFalse(libraries.Any(l => l.StartsWith("TorchSharp-cpu/", StringComparison.Ordinal) ||
                l.StartsWith("TorchSharp-cuda", StringComparison.Ordinal))
                && OperatingSystem.IsLinux(), "on Linux the consumer asks for libtorch-cpu-linux-x64 only");
        }
        Assert.IsTrue(Directory.Exists(Path.Combine(packages, "man.ml", version)), "Man.ML was not restored into the private packages folder");

        var build = TestSupport.Run("dotnet", new[] { "build", "-c", "Release", "--no-restore", "--disable-build-servers", $"-p:ManMLVersion={version}" },
            consumer, timeoutSeconds: 300);
        Assert.AreEqual(0, build.ExitCode, "build failed:\n" + build.Stdout + build.Stderr);
        var bin = Path.Combine(consumer, "bin", "Release", "net10.0");
        if (OperatingSystem.IsLinux() && !SystemLibstdcxxHas("GLIBCXX_3.4.32"))
            StringAssert.Contains(build.Stdout, "Marked GLIBCXX_3.4.32 weak in bin/Release/net10.0/runtimes/linux-x64/native/libLibTorchSharp.so",
                "the package's buildTransitive targets did not patch the consumer's libLibTorchSharp.so");

        var outDir = Path.Combine(consumer, "out");
        var run = TestSupport.Run("dotnet", new[] { Path.Combine(bin, "ConsumerCheck.dll"), ImageFolderFixture.Train, ImageFolderFixture.Validation, outDir },
            consumer, timeoutSeconds: 300);
        Console.WriteLine(run.Stdout);
        Assert.AreEqual(0, run.ExitCode, "the consumer failed:\n" + run.Stdout + run.Stderr);
        StringAssert.Contains(run.Stdout, $"loaded from {Path.Combine(bin, "Man.ML.dll")}");
        StringAssert.Contains(run.Stdout, "epoch 1: train loss");
        StringAssert.Contains(run.Stdout, "trained on 1000 images");
        StringAssert.Contains(run.Stdout, "evaluated 200 images: micro-accuracy");
        StringAssert.Contains(run.Stdout, "reloaded model scores 200 images bit for bit identically: True");
        var classes = Directory.GetDirectories(ImageFolderFixture.Train).Select(Path.GetFileName).ToList();
        var predicted = run.Stdout.Split('\n').Single(l => l.StartsWith("predicted '", StringComparison.Ordinal));
        var label = predicted.Split('\'')[1];
        CollectionAssert.Contains(classes, label, $"the prediction names no class: {predicted}");
        Assert.IsTrue(new FileInfo(Path.Combine(outDir, "model.manml.zip")).Length > 0);
    }

    private static string GlobalPackagesFolder()
    {
        var r = TestSupport.Run("dotnet", new[] { "nuget", "locals", "global-packages", "--list" });
        Assert.AreEqual(0, r.ExitCode, r.Stdout + r.Stderr);
        var line = r.Stdout.Split('\n').Single(l => l.StartsWith("global-packages:", StringComparison.Ordinal));
        return line["global-packages:".Length..].Trim();
    }

    private static bool SystemLibstdcxxHas(string version)
    {
        var lib = new[] { "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6" }
            .FirstOrDefault(File.Exists);
        if (lib is null) return false;
        var bytes = File.ReadAllBytes(lib);
        var needle = Encoding.ASCII.GetBytes(version + "\0");
        return bytes.AsSpan().IndexOf(needle) >= 0;
    }
}
