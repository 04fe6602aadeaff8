using System.Diagnostics;
using System.Text.Json.Nodes;
using Man.ML.Training;
using static TorchSharp.torch;

namespace Man.ML.Tests;

/// <summary>
/// Data-parallel training over MPI: ranks are processes on this machine, started by Open MPI's mpirun over shared memory
/// and loopback only. Open MPI is installed by scripts/install-mpi.sh when missing (the README's test command needs
/// nothing else).
/// </summary>
[TestClass]
public sealed class DistributedTests
{
    private static string? mpirun;

    [ClassInitialize]
    public static void EnsureMpi(TestContext _)
    {
        mpirun = Which("mpirun");
        if (mpirun is null)
        {
            var install = TestSupport.Run("bash", new[] { Path.Combine(TestSupport.RepositoryRoot, "scripts", "install-mpi.sh") }, timeoutSeconds: 600);
            Assert.AreEqual(0, install.ExitCode,
                "Open MPI is not installed and scripts/install-mpi.sh could not install it: " + install.Stderr + install.Stdout);
            mpirun = Which("mpirun");
        }
        Assert.IsNotNull(mpirun, "scripts/install-mpi.sh ran but mpirun is still not on PATH.");
    }

    private static string? Which(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Select(d => Path.Combine(d, program)).FirstOrDefault(File.Exists);

    // Ranks on this machine only: shared memory between them, loopback for Open MPI's own wiring; root allowed (CI
    // containers run as root); no binding, so two ranks on two cores are not pinned to one.
    private static readonly Dictionary<string, string> MpiEnvironment = new()
    {
        ["OMPI_ALLOW_RUN_AS_ROOT"] = "1",
        ["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1",
        ["OMPI_MCA_btl"] = "self,vader",
        ["OMPI_MCA_oob_tcp_if_include"] = "lo",
        ["OMPI_MCA_btl_vader_single_copy_mechanism"] = "none",
        ["OMPI_MCA_rmaps_base_oversubscribe"] = "1",
        ["OMPI_MCA_hwloc_base_binding_policy"] = "none",
    };

    private static string[] MpiArgs(int ranks, IEnumerable<string> manml) =>
        new[] { "-np", ranks.ToString(), "dotnet", TestSupport.ManmlDll }.Concat(manml).ToArray();

    // ResNet-8, K = 2, DGL + MAN: 256 training images make 4 global batches of 64.
    private static string[] Run(string outDir, int batch, params string[] more) => new[]
    {
        "train", "--data", TestSupport.BundledSample, "--train-limit", "256", "--val-split", "64", "--arch", "resnet8", "--k", "2",
        "--rule", "dgl", "--man", "--epochs", "1", "--batch-size", batch.ToString(), "--seed", "3", "--threads", "1",
        "--no-backend-check", "--out", outDir,
    }.Concat(more).ToArray();

    private static Dictionary<string, Tensor> Tensors(string modelFile)
    {
        var (network, _) = ModelCheckpoint.Load(modelFile);
        return network.state_dict().ToDictionary(p => p.Key, p => p.Value.detach().clone());
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void TwoRanksEndWithTheWeightsOfOneProcessOnTheSameGlobalBatchesAndASecondRunIsIdentical()
    {
        using var single = new TestSupport.TempDir();
        using var first = new TestSupport.TempDir();
        using var second = new TestSupport.TempDir();
        // One process, global batch 64 as two micro-batches of 32: batch norm sees each half alone, as each rank sees its shard.
        var one = TestSupport.RunManml(Run(single.Path, 64, "--micro-batches", "2"));
        Assert.AreEqual(0, one.ExitCode, one.Stderr + one.Stdout);
        foreach (var dir in new[] { first.Path, second.Path })
        {
            var r = TestSupport.Run(mpirun!, MpiArgs(2, Run(dir, 32, "--distributed", "mpi")), environment: MpiEnvironment, timeoutSeconds: 300);
            Assert.AreEqual(0, r.ExitCode, r.Stderr + r.Stdout);
            StringAssert.Contains(r.Stdout, "distributed: 2 ranks × batch 32 = global batch 64");
        }
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(first.Path, "metrics.json")))!["config"]!;
        Assert.AreEqual(2, config["distributed"]!["ranks"]!.GetValue<int>());
        Assert.AreEqual(0.05, config["lr"]!.GetValue<double>(), 1e-12, "the default rate follows the global batch (0.1·64/128)");

        var reference = Tensors(Path.Combine(single.Path, "model.ckpt"));
        var a = Tensors(Path.Combine(first.Path, "model.ckpt"));
        var b = Tensors(Path.Combine(second.Path, "model.ckpt"));
        int parameters = 0;
        double largest = 0;
        foreach (var (name, value) in reference)
        {
            Assert.IsTrue(a[name].eq(b[name]).all().item<bool>(), $"{name} differs between two runs of the same seed");
            if (name.Contains("running_") || name.Contains("num_batches")) continue; // per-rank statistics, averaged (docs/DISTRIBUTED.md)
            // Two ranks sum two shares in one addition, as autograd accumulates two micro-batches: equal up to float32 rounding.
            double difference = (a[name] - value).abs().max().item<float>();
            Assert.IsTrue(difference <= 1e-5, $"{name}: two ranks differ from one process by {difference:E2} (tolerance 1e-5)");
            largest = Math.Max(largest, difference);
            parameters++;
        }
        Console.WriteLine($"largest difference between two ranks and one process over {parameters} parameters: {largest:E2}");
        Assert.IsTrue(parameters >= 10, $"only {parameters} parameters were compared");
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void TwoRanksAsPipelineStagesComputeTheInProcessPipelineAndAtLockStepTheSequentialRun()
    {
        // Two epochs of 8 batches of 32: activations, images and labels go down to rank 1, MAN's snapshots of rank 1's
        // first unit come up to rank 0 every step, every batch's result goes to both, and each stage's state is broadcast
        // from its rank between the epochs. One thread per stage everywhere: the same arithmetic in both layouts.
        static string[] TwoEpochs(string[] args)
        {
            args[Array.IndexOf(args, "--epochs") + 1] = "2";
            return args;
        }
        string[] Pipelined(string dir, int depth, params string[] more) =>
            TwoEpochs(Run(dir, 32, new[] { "--pipeline", "2", "--pipeline-depth", depth.ToString(), "--stage-threads", "1" }.Concat(more).ToArray()));
        using var inProcess = new TestSupport.TempDir();
        using var ranks = new TestSupport.TempDir();
        using var sequential = new TestSupport.TempDir();
        using var lockStep = new TestSupport.TempDir();
        var one = TestSupport.RunManml(Pipelined(inProcess.Path, 1));
        Assert.AreEqual(0, one.ExitCode, one.Stderr + one.Stdout);
        var two = TestSupport.Run(mpirun!, MpiArgs(2, Pipelined(ranks.Path, 1, "--distributed", "mpi")), environment: MpiEnvironment, timeoutSeconds: 300);
        Assert.AreEqual(0, two.ExitCode, two.Stderr + two.Stdout);
        StringAssert.Contains(two.Stdout, "distributed: 2 ranks, one pipeline stage each");
        var seq = TestSupport.RunManml(TwoEpochs(Run(sequential.Path, 32)));
        Assert.AreEqual(0, seq.ExitCode, seq.Stderr + seq.Stdout);
        var locked = TestSupport.Run(mpirun!, MpiArgs(2, Pipelined(lockStep.Path, 0, "--distributed", "mpi")), environment: MpiEnvironment,
            timeoutSeconds: 300);
        Assert.AreEqual(0, locked.ExitCode, locked.Stderr + locked.Stdout);

        void Same(string expectedDir, string actualDir, string what)
        {
            var expected = Tensors(Path.Combine(expectedDir, "model.ckpt"));
            var actual = Tensors(Path.Combine(actualDir, "model.ckpt"));
            Assert.HasCount(expected.Count, actual);
            foreach (var (name, value) in expected)
                Assert.IsTrue(actual[name].eq(value).all().item<bool>(), $"{name}: {what} differs");
            JsonNode Epochs(string dir) => JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "metrics.json")))!["epochs"]!;
            foreach (var key in new[] { "train_loss", "val_accuracy", "segment_losses" })
                Assert.AreEqual(Epochs(expectedDir).AsArray().Select(e => e![key]!.ToJsonString()).Aggregate((a, b) => a + b),
                    Epochs(actualDir).AsArray().Select(e => e![key]!.ToJsonString()).Aggregate((a, b) => a + b), $"{key}: {what}");
        }
        Same(inProcess.Path, ranks.Path, "two ranks at depth 1 against one process's pipeline at depth 1");
        Same(sequential.Path, lockStep.Path, "two ranks in lock-step against the sequential run");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(ranks.Path, "metrics.json")))!["config"]!;
        Assert.IsTrue(config["distributed"]!["stages_as_ranks"]!.GetValue<bool>());
        Assert.AreEqual(0.025, config["lr"]!.GetValue<double>(), 1e-12, "whole batches of 32 on every rank: 0.1·32/128");

        // A pipeline of 3 stages on 2 ranks is refused on every rank, in one line, before training.
        using var refused = new TestSupport.TempDir();
        var fourSegments = Run(Path.Combine(refused.Path, "out"), 32, "--pipeline", "3", "--distributed", "mpi");
        fourSegments[Array.IndexOf(fourSegments, "--k") + 1] = "4";
        var wrong = TestSupport.Run(mpirun!, MpiArgs(2, fourSegments), environment: MpiEnvironment, timeoutSeconds: 120);
        Assert.AreNotEqual(0, wrong.ExitCode);
        StringAssert.Contains(wrong.Stderr + wrong.Stdout, "3 stages need 3 ranks (mpirun -np 3), and this job has 2");
        Assert.IsFalse(Directory.Exists(Path.Combine(refused.Path, "out")), "a refused run leaves no output folder");
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void ATwoRankRunKilledAfterItsFirstCheckpointAndResumedEndsIdenticalToOneNeverStopped()
    {
        using var whole = new TestSupport.TempDir();
        using var resumed = new TestSupport.TempDir();
        string[] Job(string dir) => MpiArgs(2, new[]
        {
            "train", "--data", TestSupport.BundledSample, "--train-limit", "2048", "--val-split", "64", "--arch", "resnet8", "--k", "2",
            "--rule", "dgl", "--man", "--epochs", "3", "--batch-size", "32", "--seed", "2", "--threads", "1", "--no-backend-check",
            "--distributed", "mpi", "--checkpoint-every", "1", "--out", dir,
        });
        var r = TestSupport.Run(mpirun!, Job(whole.Path), environment: MpiEnvironment, timeoutSeconds: 300);
        Assert.AreEqual(0, r.ExitCode, r.Stderr + r.Stdout);

        // The same job, killed (mpirun and both ranks) as soon as its first run checkpoint exists.
        var info = new ProcessStartInfo(mpirun!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in Job(resumed.Path)) info.ArgumentList.Add(arg);
        foreach (var (k, v) in MpiEnvironment) info.Environment[k] = v;
        using (var job = Process.Start(info)!)
        {
            var output = job.StandardOutput.ReadToEndAsync();
            var errors = job.StandardError.ReadToEndAsync();
            var clock = Stopwatch.StartNew();
            string checkpoint = Path.Combine(resumed.Path, "run.ckpt");
            while (!File.Exists(checkpoint) && !job.HasExited && clock.Elapsed.TotalSeconds < 240) Thread.Sleep(20);
            if (job.HasExited) Assert.Fail("the job ended before it could be killed: " + output.Result + errors.Result);
            // The ranks first: once mpirun is gone they would no longer be its children.
            foreach (var rank in RankPids(job.Id)) Process.GetProcessById(rank).Kill();
            job.Kill(entireProcessTree: true);
            job.WaitForExit();
        }
        Assert.IsFalse(File.Exists(Path.Combine(resumed.Path, "model.ckpt")), "the killed job had already finished");
        var again = TestSupport.Run(mpirun!, MpiArgs(2, new[] { "train", "--resume", resumed.Path }), environment: MpiEnvironment, timeoutSeconds: 300);
        Assert.AreEqual(0, again.ExitCode, again.Stderr + again.Stdout);

        var a = Tensors(Path.Combine(whole.Path, "model.ckpt"));
        var b = Tensors(Path.Combine(resumed.Path, "model.ckpt"));
        foreach (var (name, value) in a) Assert.IsTrue(value.eq(b[name]).all().item<bool>(), $"{name} differs after the resume");

        // The checkpoint records the job's size: one process cannot continue it.
        var alone = TestSupport.RunManml(new[] { "train", "--resume", resumed.Path, "--distributed", "none", "--out", TestSupport.NewTempFolder() });
        Assert.AreNotEqual(0, alone.ExitCode);
        StringAssert.Contains(alone.Stderr, "distributed", alone.Stderr);
    }

    private static int[] RankPids(int mpirunPid) =>
        Directory.GetDirectories("/proc").Select(Path.GetFileName).Where(n => int.TryParse(n, out _)).Select(int.Parse!)
            .Where(pid => ParentOf(pid) == mpirunPid && CommandLine(pid).Contains("manml.dll")).ToArray();

    private static string CommandLine(int pid)
    {
        try { return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' '); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return ""; }
    }

    private static int ParentOf(int pid)
    {
        try { return int.Parse(File.ReadAllText($"/proc/{pid}/stat").Split(") ")[1].Split(' ')[1]); }
        catch (Exception e) when (e is IOException or FormatException or IndexOutOfRangeException or UnauthorizedAccessException) { return -1; }
    }

    // Starts a longer two-rank run, waits until both ranks train, does something to one of them, and returns how the job ended.
    private static (int ExitCode, string Output, double Seconds, int[] Ranks, int Victim) TwoRanksAnd(Action<Process> toVictim, params string[] more)
    {
        using var dir = new TestSupport.TempDir();
        var info = new ProcessStartInfo(mpirun!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        var args = MpiArgs(2, new[]
        {
            "train", "--data", TestSupport.BundledSample, "--train-limit", "4096", "--val-split", "64", "--arch", "resnet8", "--k", "2",
            "--epochs", "500", "--batch-size", "32", "--threads", "1", "--no-backend-check", "--distributed", "mpi", "--out", dir.Path,
        }.Concat(more));
        foreach (var a in args) info.ArgumentList.Add(a);
        foreach (var (k, v) in MpiEnvironment) info.Environment[k] = v;
        using var job = Process.Start(info)!;
        var stdout = job.StandardOutput.ReadToEndAsync();
        var stderr = job.StandardError.ReadToEndAsync();
        try
        {
            // Both ranks are in training once rank 0 has printed its plan and a few seconds have passed.
            var started = Stopwatch.StartNew();
            int[] ranks;
            while ((ranks = RankPids(job.Id)).Length < 2 && started.Elapsed.TotalSeconds < 60) Thread.Sleep(200);
            Assert.AreEqual(2, ranks.Length, "mpirun did not start two ranks within a minute");
            Thread.Sleep(8_000);
            if (job.HasExited) Assert.Fail("the job ended before a rank was touched: " + stderr.Result);
            ranks = RankPids(job.Id);
            Assert.AreEqual(2, ranks.Length, $"mpirun has {ranks.Length} rank processes after 8 s, not 2");
            // mpirun forks its ranks in rank order; which one is hit does not matter, the messages must name it.
            var victim = ranks.Max();
            var clock = Stopwatch.StartNew();
            toVictim(Process.GetProcessById(victim));
            bool ended = job.WaitForExit(120_000);
            double seconds = clock.Elapsed.TotalSeconds;
            Assert.IsTrue(ended, "the job did not end within 120 s of a rank's fault");
            return (job.ExitCode, stdout.Result + stderr.Result, seconds, ranks, victim);
        }
        finally
        {
            if (!job.HasExited) job.Kill(entireProcessTree: true);
        }
    }

    private static void AssertGone(int[] pids)
    {
        Thread.Sleep(500);
        foreach (var pid in pids)
            Assert.IsFalse(File.Exists($"/proc/{pid}/stat") && !File.ReadAllText($"/proc/{pid}/stat").Contains(") Z "),
                $"rank process {pid} is still running after the job ended");
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void ARankKilledMidRunEndsTheJobWithAMessageNamingItAndLeavesNoProcess()
    {
        var (code, output, seconds, ranks, _) = TwoRanksAnd(p => p.Kill());
        Assert.AreNotEqual(0, code, output);
        // mpirun's own report, "process rank N with PID P on node H exited on signal 9 (Killed)" (Open MPI 4.1 may print PID 0).
        StringAssert.Matches(output, new System.Text.RegularExpressions.Regex(@"process rank [01] with PID \d+ on node \S+ exited on signal 9"),
            "the message names the rank that died: " + output);
        Assert.IsTrue(seconds < 60, $"the job took {seconds:0} s to end after a rank was killed");
        AssertGone(ranks);
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void ARankThatHangsEndsTheJobAfterTheCollectiveTimeoutWithAMessageNamingTheWaitingRankAndStep()
    {
        // SIGSTOP: rank 1 neither dies nor answers; rank 0 waits at most --collective-timeout, then ends the job.
        var (code, output, seconds, ranks, _) = TwoRanksAnd(p => Process.Start("kill", new[] { "-STOP", p.Id.ToString() })!.WaitForExit(),
            "--collective-timeout", "10");
        Assert.AreEqual(5, code, output);
        StringAssert.Matches(output,
            new System.Text.RegularExpressions.Regex(@"rank [01] of 2: the gradient all-reduce of segment \d at epoch \d+, step \d+ "), output);
        StringAssert.Contains(output, "did not complete within 10 s; another rank has stopped or hangs.", output);
        Assert.IsTrue(seconds < 60, $"the job took {seconds:0} s to end with a 10 s timeout");
        AssertGone(ranks);
    }

    [TestMethod]
    [TestCategory("Slow")]
    public void PipelineStagesAsRanksEndTheJobWhenARankDiesOrHangsNamingTheRankAndTheStep()
    {
        // A killed stage: mpirun ends the job and names the rank.
        var (code, output, seconds, ranks, _) = TwoRanksAnd(p => p.Kill(), "--pipeline", "2");
        Assert.AreNotEqual(0, code, output);
        StringAssert.Matches(output, new System.Text.RegularExpressions.Regex(@"process rank [01] with PID \d+ on node \S+ exited on signal 9"), output);
        Assert.IsTrue(seconds < 60, $"the job took {seconds:0} s to end after a stage's rank was killed");
        AssertGone(ranks);

        // A stage that hangs: the other rank waits for its messages at most --collective-timeout, names what it waited
        // for (the stage, the step, the rank), and ends the job.
        (code, output, seconds, ranks, _) = TwoRanksAnd(p => Process.Start("kill", new[] { "-STOP", p.Id.ToString() })!.WaitForExit(),
            "--pipeline", "2", "--collective-timeout", "10");
        Assert.AreEqual(5, code, output);
        StringAssert.Matches(output, new System.Text.RegularExpressions.Regex(@"rank [01] of 2: .*step \d+.* rank [01] did not complete within 10 s"), output);
        Assert.IsTrue(seconds < 60, $"the job took {seconds:0} s to end with a 10 s timeout");
        AssertGone(ranks);
    }
}
