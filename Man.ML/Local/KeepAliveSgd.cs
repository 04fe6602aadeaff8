// torch.optim.SGD (TorchSharp's), with a step that keeps its Scalars alive through the native calls that use them.
//
// TorchSharp 0.107 passes a Scalar to libtorch as a bare handle and does not keep the managed object alive during the
// call; a Scalar converted implicitly from a double (`p.add_(g, alpha: -lr)`) is garbage the moment its handle is read.
// Once the method is optimised by the JIT (tier 1: any hot method), a garbage collection started by another thread
// during the native call can finalize the Scalar, whose finalizer deletes the native object libtorch is about to read
// (docs/BACKEND.md shows this happen). SGD's step makes five such Scalars per parameter per step, the hottest path there
// is. Here they are made once per step, held in locals that outlive every call, and disposed at the end; the update,
// its order of operations and its state (momentum buffers, save/load format) are TorchSharp's SGD's exactly. (The class is
// called SGD because TorchSharp writes the optimizer's type name into saved state and checks it on load: run checkpoints
// written before and after stay interchangeable.)
using TorchSharp.Modules;

namespace Man.ML.Local;

/// <summary>Optimizers whose steps keep their Scalars alive.</summary>
internal static class KeepAlive
{
    /// <summary>SGD with momentum, weight decay and Nesterov, as TorchSharp's, safe against the Scalar finalizer race.</summary>
    internal sealed class SGD : TorchSharp.Modules.SGD
    {
        public SGD(IEnumerable<Parameter> parameters, double lr, double momentum, double dampening, double weightDecay, bool nesterov)
            : base(parameters, lr, momentum, dampening, weightDecay, nesterov) { }

        public override Tensor step(Func<Tensor>? closure = null) => _step<ParamGroup>(group =>
        {
            var options = group.Options;
            using var scalars = new StepScalars(options, options.LearningRate!.Value);
            foreach (var param in group.Parameters) Update(param, scalars);
        }, closure);

        /// <summary>
        /// The update of <see cref="step"/> for <paramref name="parameters"/> only, at <paramref name="learningRate"/>:
        /// a pipelined stage steps its own parameters while other stages step theirs. Safe to call from several threads
        /// at once for disjoint parameter sets (each reads its own parameters' state, which the constructor made).
        /// </summary>
        public void StepParameters(IReadOnlyList<Parameter> parameters, double learningRate)
        {
            using var scope = NewDisposeScope();
            using var scalars = new StepScalars(ParamGroups.OfType<ParamGroup>().First().Options, learningRate);
            using (no_grad()) foreach (var param in parameters) Update(param, scalars);
        }

        /// <summary>The momentum buffer of <paramref name="param"/>, or null before its first step.</summary>
        public Tensor? MomentumOf(Parameter param) => ((State)_state[param.Handle]).momentum_buffer;

        /// <summary>Gives <paramref name="param"/> a momentum buffer of zeros (to be filled) and returns it.</summary>
        public Tensor ZeroMomentum(Parameter param)
        {
            var buffer = zeros_like(param).DetachFromDisposeScope();
            ((State)_state[param.Handle]).momentum_buffer = buffer;
            return buffer;
        }

        private void Update(Parameter param, StepScalars s)
        {
            var grad = param.grad;
            if (grad is null) return;
            var state = (State)_state[param.Handle];
            if (s.WeightDecay != 0) grad = grad.add(param, s.Decay);
            if (s.Momentum != 0)
            {
                var buffer = state.momentum_buffer;
                if (buffer is null) buffer = grad.clone().detach().DetachFromDisposeScope();
                else buffer.mul_(s.Mu).add_(grad, s.Keep);
                grad = s.Nesterov ? grad.add(buffer, s.Mu) : buffer;
                state.momentum_buffer = buffer;
            }
            param.add_(grad, s.Alpha);
        }

        // One step's Scalars, made once and alive until every native call that reads them has returned.
        private sealed class StepScalars : IDisposable
        {
            public readonly double Momentum, WeightDecay;
            public readonly bool Nesterov;
            public readonly Scalar Decay, Mu, Keep, Alpha;

            public StepScalars(Options options, double lr)
            {
                Momentum = options.momentum!.Value;
                WeightDecay = options.weight_decay!.Value;
                Nesterov = options.nesterov!.Value;
                Decay = WeightDecay.ToScalar();
                Mu = Momentum.ToScalar();
                Keep = (1 - options.dampening!.Value).ToScalar();
                Alpha = (options.maximize!.Value ? lr : -lr).ToScalar();
            }

            public void Dispose()
            {
                Decay.Dispose();
                Mu.Dispose();
                Keep.Dispose();
                Alpha.Dispose();
            }
        }
    }
}
