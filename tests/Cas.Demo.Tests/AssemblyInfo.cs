using System.Runtime.CompilerServices;
using Cas.Engine.Compute;

// Each demo run trains and serves; side by side they would oversubscribe the shared cores, so the tests run one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Cas.Demo.Tests;

static class TestSetup
{
    /// <summary>Tiny shapes (stories260K): the managed SGEMM, as in Cas.Jobs.Tests, avoids native BLAS threads spinning.</summary>
    [ModuleInitializer]
    internal static void UseManagedBlas() => Blas.TryUse(BlasBackend.Managed);
}
