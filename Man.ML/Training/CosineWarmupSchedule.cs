// The reference learning-rate schedule (MAN/InfoPro train.py): cosine annealing to zero with a linear warm-up over
// the first 2.5% of the run (10 of 400 epochs). With E total steps and e = 1..E:
//   e ≤ W: lr = ½·lr0·(1 + cos(π·e/E))·(e − 1)/W + lr_start·(W + 1 − e)/W
//   e > W: lr = ½·lr0·(1 + cos(π·e/E))
// The reference steps once per epoch with lr_start = 0.01 at lr0 = 0.8; Man.ML scales lr_start with lr0 (lr0/80) so
// the linear-scaling rule carries over. A run too short for a warm-up of whole epochs (under 40 epochs) applies the
// same curve per iteration.
namespace Man.ML.Training;

/// <summary>Cosine learning-rate schedule with the reference's linear warm-up.</summary>
internal sealed class CosineWarmupSchedule
{
    /// <summary>Fraction of the run spent warming up (10 of 400 epochs).</summary>
    public const double WarmupFraction = 0.025;

    private readonly double baseRate;
    private readonly int stepsPerEpoch;

    /// <summary>Whether the rate changes every iteration (short runs) rather than every epoch.</summary>
    public bool PerIteration { get; }

    /// <summary>Total schedule steps E (epochs, or iterations when <see cref="PerIteration"/>).</summary>
    public int TotalSteps { get; }

    /// <summary>Warm-up steps W.</summary>
    public int WarmupSteps { get; }

    /// <summary>Rate at the first warm-up step (lr0/80: 0.01 at the reference's lr0 = 0.8).</summary>
    public double StartRate => baseRate / 80.0;

    /// <summary>Creates the schedule for <paramref name="epochs"/> epochs of <paramref name="stepsPerEpoch"/> iterations.</summary>
    public CosineWarmupSchedule(double baseRate, int epochs, int stepsPerEpoch)
    {
        if (epochs < 1) throw new ArgumentOutOfRangeException(nameof(epochs));
        if (stepsPerEpoch < 1) throw new ArgumentOutOfRangeException(nameof(stepsPerEpoch));
        this.baseRate = baseRate;
        this.stepsPerEpoch = stepsPerEpoch;
        PerIteration = epochs * WarmupFraction < 1;
        TotalSteps = PerIteration ? epochs * stepsPerEpoch : epochs;
        WarmupSteps = Math.Max(1, (int)Math.Round(TotalSteps * WarmupFraction));
    }

    /// <summary>The rate for iteration <paramref name="iteration"/> (0-based) of epoch <paramref name="epoch"/> (0-based).</summary>
    public double Rate(int epoch, int iteration)
    {
        int e = PerIteration ? epoch * stepsPerEpoch + iteration + 1 : epoch + 1;
        return RateAtStep(e);
    }

    /// <summary>The rate at schedule step e (1-based), the formula above.</summary>
    public double RateAtStep(int e)
    {
        double cosine = 0.5 * baseRate * (1 + Math.Cos(Math.PI * e / TotalSteps));
        if (e > WarmupSteps) return cosine;
        int w = WarmupSteps;
        return cosine * (e - 1) / w + StartRate * (w + 1 - e) / w;
    }
}
