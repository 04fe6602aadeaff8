// manml-lab serve-load: latency and throughput of a running manml-serve (or any service with its POST /predict): for
// each client count, every client posts images from a folder one after another; p50, p99, images/s and errors printed.
using System.CommandLine;
using System.Diagnostics;
using System.Net.Http;
using Man.ML.Samples.Cli;
using Spectre.Console;

namespace Man.ML.Lab.Cli;

internal static class ServeLoadCommand
{
    public static Command Create()
    {
        var url = new Option<string>("--url") { Description = "The service's predict endpoint.", DefaultValueFactory = _ => "http://127.0.0.1:5000/predict" };
        var images = new Option<string>("--images") { Description = "A folder of images (searched recursively) to post.", Required = true };
        var clients = new Option<string>("--clients") { Description = "Client counts to measure, comma-separated.", DefaultValueFactory = _ => "1,8" };
        var requests = new Option<int>("--requests") { Description = "Requests each client sends.", DefaultValueFactory = _ => 50 };
        var command = new Command("serve-load", "Latency and throughput of a running manml-serve under concurrent clients.")
        {
            url, images, clients, requests,
        };
        command.SetAction(parse => CliErrors.Run(() =>
        {
            var folder = parse.GetValue(images)!;
            if (!Directory.Exists(folder)) throw new CliException($"--images '{folder}' is not a folder.");
            var bodies = Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories).Order().Select(File.ReadAllBytes).ToList();
            if (bodies.Count == 0) throw new CliException($"--images '{folder}' holds no files.");
            int perClient = parse.GetValue(requests);
            if (perClient < 1) throw new CliException("--requests must be positive.");
            var counts = parse.GetValue(clients)!.Split(',').Select(c => int.TryParse(c.Trim(), out int n) && n > 0 ? n
                : throw new CliException($"--clients must be positive numbers (got '{c}').")).ToList();
            using var http = new HttpClient();
            var endpoint = new Uri(parse.GetValue(url)!);
            // One warm-up request, so the first measured one does not pay for connection set-up.
            try
            {
                using var warm = http.PostAsync(endpoint, new ByteArrayContent(bodies[0])).GetAwaiter().GetResult();
                if (!warm.IsSuccessStatusCode) throw new CliException($"{endpoint} answered {(int)warm.StatusCode} to the first image.");
            }
            catch (HttpRequestException e) { throw new CliException($"Cannot reach {endpoint}: {e.Message}"); }
            var table = new Table().Title($"{endpoint}: {bodies.Count} images from {folder}")
                .AddColumns("clients", "requests", "errors", "p50 ms", "p99 ms", "images/s");
            foreach (int n in counts)
            {
                var latencies = new double[n * perClient];
                int errors = 0;
                var clock = Stopwatch.StartNew();
                Task.WhenAll(Enumerable.Range(0, n).Select(c => Task.Run(async () =>
                {
                    for (int r = 0; r < perClient; r++)
                    {
                        long start = Stopwatch.GetTimestamp();
                        using var response = await http.PostAsync(endpoint, new ByteArrayContent(bodies[(c * 7 + r) % bodies.Count]));
                        await response.Content.ReadAsByteArrayAsync();
                        latencies[c * perClient + r] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                        if (!response.IsSuccessStatusCode) Interlocked.Increment(ref errors);
                    }
                }))).GetAwaiter().GetResult();
                double seconds = clock.Elapsed.TotalSeconds;
                Array.Sort(latencies);
                table.AddRow(n.ToString(), latencies.Length.ToString(), errors.ToString(), latencies[latencies.Length / 2].ToString("0.0"),
                    latencies[Math.Min(latencies.Length - 1, (int)(latencies.Length * 0.99))].ToString("0.0"), (latencies.Length / seconds).ToString("0.0"));
            }
            AnsiConsole.Write(table);
            return 0;
        }));
        return command;
    }
}
