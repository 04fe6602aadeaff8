// Linear separability of representations (the paper's Figure 4): a linear softmax classifier trained on frozen,
// globally pooled features of every unit, its accuracy on held-out images reported per unit. Features are
// standardised with the training set's statistics; the classifier is trained full-batch with Adam.

using Man.ML.Backend;
namespace Man.ML.Diagnostics;

/// <summary>Trains and scores linear probes.</summary>
public static class LinearProbe
{
    /// <summary>Accuracy on (<paramref name="valFeatures"/>, <paramref name="valLabels"/>) of a linear classifier trained on the training features.</summary>
    /// <param name="trainFeatures">(N, D) row-major.</param>
    /// <param name="trainLabels">N class indices.</param>
    /// <param name="valFeatures">(M, D) row-major.</param>
    /// <param name="valLabels">M class indices.</param>
    /// <param name="classes">Number of classes.</param>
    /// <param name="steps">Full-batch optimisation steps.</param>
    /// <param name="seed">Seed of the classifier's initialisation.</param>
    public static double Accuracy(float[] trainFeatures, long[] trainLabels, float[] valFeatures, long[] valLabels, int classes, int steps = 300, int seed = 0)
    {
        using var scope = NewDisposeScope();
        int n = trainLabels.Length, m = valLabels.Length, d = trainFeatures.Length / n;
        var x = tensor(trainFeatures, new long[] { n, d });
        var xv = tensor(valFeatures, new long[] { m, d });
        var mean = x.mean(new long[] { 0 }, keepdim: true);
        var std = x.std(0, keepdim: true).Plus(1e-6);
        x = (x - mean) / std;
        xv = (xv - mean) / std;
        var y = tensor(trainLabels);
        // The probe's initialisation is seeded; the caller's generator is given back.
        using var callers = get_rng_state();
        manual_seed(seed);
        var probe = nn.Linear(d, classes);
        set_rng_state(callers);
        using var optimizer = optim.Adam(probe.parameters(), 0.05, weight_decay: 1e-4);
        for (int s = 0; s < steps; s++)
        {
            using var step = NewDisposeScope();
            optimizer.zero_grad();
            nn.functional.cross_entropy(probe.call(x), y).backward();
            optimizer.step();
        }
        using var noGrad = no_grad();
        var predicted = probe.call(xv).argmax(1);
        return predicted.eq(tensor(valLabels)).to_type(ScalarType.Float64).mean().item<double>();
    }
}
