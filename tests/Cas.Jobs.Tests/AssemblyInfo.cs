using System.Runtime.CompilerServices;
using Cas.Engine.Compute;

// Training calls BLAS; jobs side by side would oversubscribe the shared cores, so the tests run one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Cas.Jobs.Tests;

static class TestSetup
{
    /// <summary>Tiny shapes (stories260K): the managed SGEMM, as in Cas.Training.Tests, avoids native BLAS threads spinning.</summary>
    [ModuleInitializer]
    internal static void UseManagedBlas() => Blas.TryUse(BlasBackend.Managed);
}
