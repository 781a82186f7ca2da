using System.Runtime.CompilerServices;
using Cas.Engine.Compute;

// The backward pass calls multi-threaded BLAS; tests running side by side would oversubscribe the cores
// (BLAS worker threads spin-wait), so the tests of this assembly run one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Cas.Training.Tests;

static class TestSetup
{
    /// <summary>
    /// The tests use tiny shapes, for which native BLAS threads only add overhead, and on a shared machine whose
    /// cores are busy their spin-waiting makes a run 10× slower. So they run on the managed SGEMM; the PyTorch
    /// golden test re-runs its cases on every installed native backend explicitly.
    /// </summary>
    [ModuleInitializer]
    internal static void UseManagedBlas() => Blas.TryUse(BlasBackend.Managed);
}
