// Published pretrained weights by name: torchvision's ImageNet weights of every architecture Man.ML builds with
// torchvision's names, downloaded once into a cache folder and verified before every use.
//
// torchvision publishes each file's SHA-256 only as the first 8 hex digits in its name (resnet18-f37072fd.pth), and
// torch.hub checks that prefix; Man.ML checks the same prefix, or the whole hash where a registered source gives it.
// A download goes to a temporary name beside its final one and is renamed into place only once complete and verified,
// so the cache never holds a partial or unverified file under a real name, whatever interrupts the transfer.
using System.Collections.Concurrent;
using System.Net;
using System.Net.Http;
using System.Security.Cryptography;
using Man.ML.Data;

namespace Man.ML.Interop;

/// <summary>Where one set of pretrained weights is published.</summary>
/// <param name="Architecture">The architecture the weights are for (Man.ML's name, as <c>--arch</c>).</param>
/// <param name="Name">The weights' name: torchvision's (<c>IMAGENET1K_V1</c>, <c>IMAGENET1K_V2</c>) or a registered one.</param>
/// <param name="Url">Where the file is downloaded from; its last path segment is the file's name in the cache.</param>
/// <param name="Sha256">The file's SHA-256 in hex, or its first hex digits (at least 8) where that is all that is published.</param>
/// <param name="Normalization">The input normalisation the weights were trained with.</param>
public sealed record PretrainedSource(string Architecture, string Name, Uri Url, string Sha256, Normalization Normalization)
{
    /// <summary>The file's name in the cache folder.</summary>
    public string FileName => Path.GetFileName(Url.AbsolutePath);
}

/// <summary>How far a download has come.</summary>
/// <param name="Received">Bytes received so far.</param>
/// <param name="Total">The file's size where the server says it, else null.</param>
public readonly record struct DownloadProgress(long Received, long? Total);

/// <summary>Pretrained weights could not be had: no network, a refused or truncated transfer, a wrong hash, no room.</summary>
public sealed class PretrainedWeightsException : IOException
{
    /// <summary>Creates the exception with its one-line message.</summary>
    public PretrainedWeightsException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>The catalog of published pretrained weights, and their download cache.</summary>
public static class PretrainedWeights
{
    /// <summary>The environment variable that sets the cache folder (as TORCH_HOME does for torch.hub).</summary>
    public const string CacheVariable = "MANML_PRETRAINED_CACHE";

    /// <summary>What <c>imagenet</c> stands for: torchvision's first ImageNet-1K weights of each architecture.</summary>
    public const string ImageNet = "IMAGENET1K_V1";

    private static readonly ConcurrentDictionary<(string, string), PretrainedSource> Sources = new(Builtin().ToDictionary(
        s => (s.Architecture, s.Name.ToUpperInvariant())));

    // torchvision's published files (torchvision.models: *_Weights.IMAGENET1K_V1 / _V2), every one an ImageNet-1K
    // classifier trained on ImageNet's mean and std.
    private static IEnumerable<PretrainedSource> Builtin()
    {
        const string Base = "https://download.pytorch.org/models/";
        (string Arch, string Name, string File)[] files =
        {
            ("resnet18", "IMAGENET1K_V1", "resnet18-f37072fd.pth"),
            ("resnet34", "IMAGENET1K_V1", "resnet34-b627a593.pth"),
            ("resnet50", "IMAGENET1K_V1", "resnet50-0676ba61.pth"),
            ("resnet50", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth"),
            ("resnet101", "IMAGENET1K_V1", "resnet101-63fe2227.pth"),
            ("resnet101", "IMAGENET1K_V2", "resnet101-cd907fc2.pth"),
            ("resnet152", "IMAGENET1K_V1", "resnet152-394f9c45.pth"),
            ("resnet152", "IMAGENET1K_V2", "resnet152-f82ba261.pth"),
            ("resnext50_32x4d", "IMAGENET1K_V1", "resnext50_32x4d-7cdf4587.pth"),
            ("resnext50_32x4d", "IMAGENET1K_V2", "resnext50_32x4d-1a0047aa.pth"),
            ("resnext101_32x8d", "IMAGENET1K_V1", "resnext101_32x8d-8ba56ff5.pth"),
            ("resnext101_32x8d", "IMAGENET1K_V2", "resnext101_32x8d-110c445d.pth"),
            ("vgg11_bn", "IMAGENET1K_V1", "vgg11_bn-6002323d.pth"),
            ("vgg13_bn", "IMAGENET1K_V1", "vgg13_bn-abd245e5.pth"),
            ("vgg16_bn", "IMAGENET1K_V1", "vgg16_bn-6c64b313.pth"),
            ("vgg19_bn", "IMAGENET1K_V1", "vgg19_bn-c79401a0.pth"),
        };
        return files.Select(f => new PretrainedSource(f.Arch, f.Name, new Uri(Base + f.File),
            f.File[(f.File.LastIndexOf('-') + 1)..f.File.LastIndexOf('.')], ImageNetTransform.ImageNetNormalization));
    }

    /// <summary>Every known source: torchvision's and those registered.</summary>
    public static IReadOnlyCollection<PretrainedSource> All => Sources.Values.OrderBy(s => s.Architecture).ThenBy(s => s.Name).ToList();

    /// <summary>
    /// Adds (or replaces) a source, for weights an application publishes itself (a company's own backbones, a mirror).
    /// </summary>
    /// <exception cref="ArgumentException">The hash is not hex or shorter than 8 digits, or the URL is not http(s) or file.</exception>
    public static void Register(PretrainedSource source)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (source.Sha256.Length < 8 || source.Sha256.Length > 64 || !source.Sha256.All(Uri.IsHexDigit))
            throw new ArgumentException($"The SHA-256 of '{source.Name}' must be 8 to 64 hex digits (got '{source.Sha256}').", nameof(source));
        if (source.Url.Scheme is not ("http" or "https") || source.FileName.Length == 0)
            throw new ArgumentException($"The URL of '{source.Name}' must be http(s) and end in a file name (got '{source.Url}').", nameof(source));
        Sources[(Models.Architectures.Canonical(source.Architecture), source.Name.ToUpperInvariant())] = source;
    }

    /// <summary>
    /// The source of <paramref name="name"/> for <paramref name="architecture"/>: <c>imagenet</c> (torchvision's
    /// <see cref="ImageNet"/>), a torchvision weights name such as <c>IMAGENET1K_V2</c>, or a registered name; any case.
    /// </summary>
    /// <exception cref="InvalidOptionException">No such weights; the message lists those the architecture has.</exception>
    public static PretrainedSource Find(string architecture, string name, string option = "Pretrained")
    {
        string arch;
        try { arch = Models.Architectures.Canonical(architecture); }
        catch (ArgumentException e) { throw new InvalidOptionException(option, e.Message); }
        var key = name.Equals("imagenet", StringComparison.OrdinalIgnoreCase) ? ImageNet : name.ToUpperInvariant();
        if (Sources.TryGetValue((arch, key), out var source)) return source;
        var known = Sources.Values.Where(s => s.Architecture == arch).Select(s => s.Name).Order().ToList();
        throw new InvalidOptionException(option, known.Count == 0
            ? $"No pretrained weights are published for {arch}; they exist for {string.Join(", ", Sources.Keys.Select(k => k.Item1).Distinct().Order())}."
            : $"No pretrained weights '{name}' for {arch}; it has imagenet ({ImageNet})" +
              $"{string.Concat(known.Where(k => k != ImageNet).Select(k => ", " + k))}.");
    }

    /// <summary>
    /// The cache folder: <paramref name="folder"/> when given, else <c>$MANML_PRETRAINED_CACHE</c>, else
    /// <c>$XDG_CACHE_HOME/manml/pretrained</c> (<c>~/.cache/manml/pretrained</c>; the local application data folder on Windows).
    /// </summary>
    public static string CacheFolder(string? folder = null)
    {
        if (!string.IsNullOrWhiteSpace(folder)) return Path.GetFullPath(folder);
        if (Environment.GetEnvironmentVariable(CacheVariable) is { Length: > 0 } variable) return Path.GetFullPath(variable);
        var root = OperatingSystem.IsWindows() ? Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData)
            : Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "manml", "pretrained");
    }

    /// <summary>Where <paramref name="source"/> is kept in the cache folder (whether or not it is there).</summary>
    public static string CachedPath(PretrainedSource source, string? cacheFolder = null) => Path.Combine(CacheFolder(cacheFolder), source.FileName);

    /// <summary>
    /// The verified local file of <paramref name="source"/>: the cached one when its hash checks out, else downloaded
    /// (into a temporary name, verified, then renamed into the cache). A cached file that fails its hash is downloaded
    /// again.
    /// </summary>
    /// <param name="source">The weights.</param>
    /// <param name="cacheFolder">The cache folder; null: <see cref="CacheFolder"/>'s default.</param>
    /// <param name="progress">Called on this thread every 4 MiB received and at the end of a download.</param>
    /// <param name="client">The HTTP client to download with (a proxy, a timeout); null: a shared one without timeout.</param>
    /// <param name="cancellation">Stops a download between reads; the partial file is deleted.</param>
    /// <exception cref="PretrainedWeightsException">One line naming the source and what went wrong: the server cannot be
    /// reached or refuses, the transfer ends early, the hash differs, or the cache folder has no room. Nothing is left
    /// in the cache.</exception>
    public static string Fetch(PretrainedSource source, string? cacheFolder = null, Action<DownloadProgress>? progress = null,
        HttpClient? client = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        var path = CachedPath(source, cacheFolder);
        if (File.Exists(path) && HashMatches(path, source.Sha256)) return path;
        Download(source, path, progress, client, cancellation);
        return path;
    }

    /// <summary>
    /// Whether the file's SHA-256 (hex) starts with <paramref name="sha256"/> (all of it when 64 digits are given). A
    /// file that matched is not hashed again in this process while its size and modification time stay the same (a run
    /// checks the cached file when the command line fetches it and again when the plan loads it).
    /// </summary>
    public static bool HashMatches(string path, string sha256)
    {
        var info = new FileInfo(path);
        var key = (info.FullName, sha256.ToLowerInvariant());
        if (Verified.TryGetValue(key, out var seen) && seen == (info.Length, info.LastWriteTimeUtc)) return true;
        using var stream = info.OpenRead();
        bool matches = Convert.ToHexStringLower(SHA256.HashData(stream)).StartsWith(sha256, StringComparison.OrdinalIgnoreCase);
        if (matches) Verified[key] = (info.Length, info.LastWriteTimeUtc);
        return matches;
    }

    private static readonly ConcurrentDictionary<(string Path, string Sha256), (long Length, DateTime Written)> Verified = new();

    private static readonly Lazy<HttpClient> Shared = new(() => new HttpClient { Timeout = Timeout.InfiniteTimeSpan });

    private static void Download(PretrainedSource source, string path, Action<DownloadProgress>? progress, HttpClient? client,
        CancellationToken cancellation)
    {
        string what = $"{source.Architecture} {source.Name} weights";
        var folder = Path.GetDirectoryName(path)!;
        try { Directory.CreateDirectory(folder); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new PretrainedWeightsException($"Cannot make the pretrained-weights cache '{folder}': {e.Message}", e);
        }
        var temp = Path.Combine(folder, $".{source.FileName}.{Environment.ProcessId}.{Guid.NewGuid():N}.partial");
        try
        {
            using var response = Send(client ?? Shared.Value, source, what, cancellation);
            long? total = response.Content.Headers.ContentLength;
            if (total is { } size) Training.OutputSpace.Ensure(folder, size, what);
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            long received = 0;
            using (var body = response.Content.ReadAsStream(cancellation))
            using (var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                var buffer = new byte[1 << 20];
                long reported = -1;
                while (true)
                {
                    int n;
                    try { n = body.Read(buffer, 0, buffer.Length); }
                    catch (Exception e) when (e is IOException or HttpRequestException)
                    {
                        throw new PretrainedWeightsException(
                            $"The download of {what} from {source.Url} broke off after {received} of {total?.ToString() ?? "?"} bytes: {e.Message}", e);
                    }
                    if (n == 0) break;
                    cancellation.ThrowIfCancellationRequested();
                    file.Write(buffer, 0, n);
                    sha.AppendData(buffer, 0, n);
                    received += n;
                    if (progress is not null && (received - reported >= 1 << 22 || received == total)) { progress(new(received, total)); reported = received; }
                }
                file.Flush(flushToDisk: true);
            }
            if (total is { } expected && received != expected)
                throw new PretrainedWeightsException($"The download of {what} from {source.Url} is truncated: {received} of {expected} bytes.");
            var hash = Convert.ToHexStringLower(sha.GetHashAndReset());
            if (!hash.StartsWith(source.Sha256, StringComparison.OrdinalIgnoreCase))
                throw new PretrainedWeightsException($"The download of {what} from {source.Url} has SHA-256 {hash[..16]}…, not the published " +
                    $"{source.Sha256.ToLowerInvariant()}: refused (nothing was cached).");
            File.Move(temp, path, overwrite: true);
        }
        catch (IOException e) when (e is not PretrainedWeightsException)
        {
            throw new PretrainedWeightsException(e.HResult == 28 || e.Message.Contains("No space left", StringComparison.Ordinal)
                ? $"No room in the pretrained-weights cache '{folder}' for {what}: {e.Message}"
                : $"Cannot write {what} into the cache '{folder}': {e.Message}", e);
        }
        finally
        {
            try { if (File.Exists(temp)) File.Delete(temp); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } // the download's own error is the one to report
        }
    }

    private static HttpResponseMessage Send(HttpClient client, PretrainedSource source, string what, CancellationToken cancellation)
    {
        HttpResponseMessage response;
        try
        {
            response = client.Send(new HttpRequestMessage(HttpMethod.Get, source.Url), HttpCompletionOption.ResponseHeadersRead, cancellation);
        }
        catch (Exception e) when (e is HttpRequestException or IOException or TaskCanceledException && !cancellation.IsCancellationRequested)
        {
            throw new PretrainedWeightsException($"Cannot download {what} from {source.Url}: {e.Message} " +
                $"(offline: put {source.FileName} into the cache folder, or give the file with InitFrom / --init-from).", e);
        }
        if (response.StatusCode != HttpStatusCode.OK)
        {
            response.Dispose();
            throw new PretrainedWeightsException(
                $"Cannot download {what} from {source.Url}: the server answered {(int)response.StatusCode} {response.ReasonPhrase}.");
        }
        return response;
    }
}
