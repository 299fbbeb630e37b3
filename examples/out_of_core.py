"""Out of core: an SVD of a matrix four times the memory of each worker.

A matrix is generated blockwise into Zarr (never whole in memory), then a
LocalCluster whose workers may each use a quarter of the matrix's bytes runs the
streaming randomized SVD (its default: 2 passes) and the single-pass sketch. Each task
reads its own row panel from the store and sends back only sketches. The example
prints passes, time, errors and the workers' peak memory, and checks that no
worker was restarted.

    python examples/out_of_core.py      (prints only; it draws no figure)
"""

from __future__ import annotations

import os
import tempfile
import time

from _common import parser

import dlowrank
from dlowrank.runtime import local_cluster


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    args = parser(__doc__, figures=False).parse_args()
    shape = (20_000, 1_000) if args.tiny else (60_000, 4_000)  # 160 MB or 1.9 GB of float64
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.zarr")
        made = dlowrank.generate(
            path, shape, 100, decay=0.9, noise=1e-6, seed=0, chunks=(1_000, shape[1])
        )
        nbytes = made.array.nbytes
        limit = max(nbytes // 4, 300_000_000)
        print(
            f"matrix {shape[0]} x {shape[1]}: {nbytes / 1e6:.0f} MB; worker limit "
            f"{limit / 1e6:.0f} MB ({nbytes / limit:.1f}x smaller than the matrix)"
        )
        with local_cluster(2, threads_per_worker=1, memory_limit=limit) as client:
            ids = [w["id"] for w in client.scheduler_info()["workers"].values()]
            for name, call in (
                ("randomized_svd", dlowrank.randomized_svd),
                ("sketch_svd", dlowrank.sketch_svd),
            ):
                start = time.perf_counter()
                r = call(path, 10, seed=0, client=client)
                peak = max(client.run(_peak_rss).values())
                optimum = dlowrank.optimal_error(made.singular_values, 10).rel_frobenius
                print(
                    f"{name:18}: {r.passes} pass(es), {time.perf_counter() - start:.1f} s, "
                    f"error {r.rel_error:.4f} ({r.error_kind}; optimum {optimum:.4f}), "
                    f"worker peak {peak / 1e6:.0f} MB"
                )
            same = ids == [w["id"] for w in client.scheduler_info()["workers"].values()]
            print(f"workers restarted: {'none' if same else 'some'}")


if __name__ == "__main__":
    main()
