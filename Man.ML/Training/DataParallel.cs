// What the epoch loop does differently on a rank of a data-parallel run: which rows of each global batch are its own,
// the check that every rank runs the same plan, the epoch's figures summed over the ranks, and the batch-norm running
// statistics averaged so that evaluation, checkpoints and the model are the same on every rank.
using System.Security.Cryptography;
using System.Text;
using Man.ML.Distributed;
using Man.ML.Local;
using Man.ML.Backend;

namespace Man.ML.Training;

internal static class DataParallel
{
    /// <summary>Rank <paramref name="rank"/>'s rows of the global batch <paramref name="batch"/>: R contiguous shards
    /// whose sizes differ by at most one.</summary>
    public static (int Start, int End) Shard((int Start, int End) batch, int rank, int ranks)
    {
        long n = batch.End - batch.Start;
        return (batch.Start + (int)(n * rank / ranks), batch.Start + (int)(n * (rank + 1) / ranks));
    }

    /// <summary>Every rank must train the same run: compares a hash of the plan (where each rank runs aside) across ranks.</summary>
    /// <exception cref="DistributedException">The ranks were started with different options.</exception>
    public static void EnsureSamePlan(RunPlan plan, double timeoutSeconds)
    {
        var json = plan.ToJson();
        foreach (var key in RunPlan.KeysFreeOnResume) json.Remove(key);
        long hash = BitConverter.ToInt64(SHA256.HashData(Encoding.UTF8.GetBytes(json.ToJsonString())), 0);
        var world = MpiWorld.Instance;
        var (min, max) = world.MinMax(hash, timeoutSeconds, () => "the check that every rank runs the same plan");
        if (min != max)
            throw new DistributedException(world.Rank,
                $"rank {world.Rank} of {world.Size}: the ranks were started with different options (their run plans differ); " +
                "start every rank with the same command.");
    }

    /// <summary>The epoch's training figures summed over every rank.</summary>
    public static (double Loss, long Correct, long Seen, double[] Segments) SumFigures(MpiWorld world, double lossSum, long correct,
        long seen, double[] segmentSums, double timeoutSeconds, int epoch)
    {
        var values = new double[3 + segmentSums.Length];
        (values[0], values[1], values[2]) = (lossSum, correct, seen);
        segmentSums.CopyTo(values, 3);
        world.Sum(values, timeoutSeconds, () => $"the sum of epoch {epoch + 1}'s training figures");
        return (values[0], (long)Math.Round(values[1]), (long)Math.Round(values[2]), values[3..]);
    }

    /// <summary>
    /// Replaces every floating-point buffer (batch norm's running mean and variance, in the network, the auxiliary heads
    /// and MAN's copies) by its mean over the ranks. The mean of the ranks' running variances leaves out how far their
    /// running means lie apart, a difference that vanishes as shards grow; DDP instead keeps each rank's own.
    /// </summary>
    public static void AverageStatistics(MpiWorld world, LocalTrainer local, double timeoutSeconds, int epoch)
    {
        var buffers = local.Network.buffers().Concat(local.AuxiliaryModule.buffers()).Where(b => b.is_floating_point()).ToList();
        if (buffers.Count == 0 || world.Size == 1) return;
        using var scope = NewDisposeScope();
        using var guard = no_grad();
        var values = cat(buffers.Select(b => b.detach().reshape(-1).to(ScalarType.Float64, CPU)).ToArray()).data<double>().ToArray();
        world.Sum(values, timeoutSeconds, () => $"the average of epoch {epoch + 1}'s batch-norm statistics");
        var mean = tensor(values, ScalarType.Float64).DividedByInPlace(world.Size);
        long offset = 0;
        foreach (var b in buffers)
        {
            long n = b.numel();
            b.copy_(mean.narrow(0, offset, n).view(b.shape));
            offset += n;
        }
    }
}
