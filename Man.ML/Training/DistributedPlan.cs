// Where a distributed run's process stands in its job: the ranks and this one's place. Part of the plan so that every
// front end prints it and a checkpoint is resumed only by a job of the same size.
namespace Man.ML.Training;

/// <summary>A distributed run's MPI job, as this process sees it.</summary>
/// <param name="Ranks">R, the processes of the job.</param>
/// <param name="Rank">This process's rank, 0 to R − 1; rank 0 writes the run's files.</param>
/// <param name="Library">The MPI library's version line.</param>
public sealed record DistributedPlan(int Ranks, int Rank, string Library)
{
    /// <summary>Whether the ranks are the stages of a pipelined run (rank s trains stage s on whole batches) rather than
    /// data-parallel replicas.</summary>
    public bool StagesAsRanks { get; init; }

    /// <summary>Whether this process writes the run's files (metrics, checkpoints, the model).</summary>
    public bool WritesFiles => Rank == 0;

    internal static DistributedPlan OfThisJob()
    {
        var world = Distributed.MpiWorld.Instance;
        return new DistributedPlan(world.Size, world.Rank, world.Version);
    }
}
