"""``dlowrank bench --suite factorization``: the three factorization targets, measured.

1. NMF on a 50,000 x 1,000 non-negative rank-20 matrix (W, H uniform, plus 0.01
   uniform noise): scikit-learn ``NMF(solver="cd", init="nndsvda")`` against
   dlowrank HALS given the same wall time, in memory; then the same dlowrank call
   on the matrix in Zarr on a LocalCluster with capped worker memory.
2. Matrix completion on ratings made by the recipe of shared/bench/make_ratings.py
   (60,000 users x 12,000 items, 3,000,000 ratings, rank 16, Zipf item popularity,
   noise sd 0.3, 10 % held out): held-out RMSE and wall time of dlowrank ALS at rank
   16, read sparse from a Zarr ratings group.
3. Passes needed by gradient descent and by ALS to come within 1e-4 (relative
   Frobenius) of the soft-thresholded SVD on a 20,000 x 2,000 decaying spectrum.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from dlowrank.runtime.budget import PeakMemory


def nmf_matrix(m: int, n: int, rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((m, rank)) @ rng.random((rank, n)) + 0.01 * rng.random((m, n))


def bench_nmf(
    m: int = 50_000,
    n: int = 1_000,
    rank: int = 20,
    seed: int = 0,
    workdir: str | None = None,
    say: Callable[[str], None] = print,
) -> list[dict]:
    import warnings

    from sklearn.decomposition import NMF

    import dlowrank

    a = nmf_matrix(m, n, rank, seed)
    norm = np.linalg.norm(a)
    rows = []
    say("nmf: scikit-learn cd")
    with warnings.catch_warnings(), PeakMemory() as mem:
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model = NMF(rank, solver="cd", init="nndsvda", random_state=seed).fit(a)
        w = model.transform(a)
        sk_seconds = time.perf_counter() - start
    sk_err = float(np.linalg.norm(a - w @ model.components_) / norm)
    rows.append(
        {
            "method": "scikit-learn NMF cd nndsvda (in memory)",
            "seconds": sk_seconds,
            "iterations": int(model.n_iter_),
            "rel_error": sk_err,
            "peak_mb": mem.peak / 1e6,
        }
    )
    # the same wall time: HALS iterates until scikit-learn's time is spent
    say("nmf: dlowrank hals (in memory)")
    with PeakMemory() as mem:
        start = time.perf_counter()
        r = dlowrank.nmf(a, rank, max_iter=100_000, tol=0.0, seed=seed, max_seconds=sk_seconds)
        seconds = time.perf_counter() - start
    budget = r.n_iter  # the Zarr run below repeats exactly these iterations
    rows.append(
        {
            "method": "dlowrank nmf hals (in memory, within scikit-learn's wall time)",
            "seconds": seconds,
            "iterations": r.n_iter,
            "passes": r.passes,
            "rel_error": r.rel_error,
            "peak_mb": mem.peak / 1e6,
        }
    )
    say("nmf: dlowrank hals on Zarr, capped workers")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        import dask.array as da

        from dlowrank.runtime import local_cluster

        path = os.path.join(tmp, "nmf.zarr")
        da.from_array(a, chunks=(2_500, n)).to_zarr(path)
        limit = max(a.nbytes // 4, 300_000_000)
        with local_cluster(2, 1, limit) as client, PeakMemory() as mem:
            start = time.perf_counter()
            rz = dlowrank.nmf(path, rank, max_iter=budget, tol=0.0, seed=seed, client=client)
            seconds = time.perf_counter() - start
        rows.append(
            {
                "method": f"dlowrank nmf hals (Zarr, 2 workers x {limit / 1e6:.0f} MB)",
                "seconds": seconds,
                "iterations": rz.n_iter,
                "passes": rz.passes,
                "rel_error": rz.rel_error,
                "peak_mb": mem.peak / 1e6,
            }
        )
    return rows


def ratings_recipe(
    seed: int = 0,
    n_users: int = 60_000,
    n_items: int = 12_000,
    rank: int = 16,
    n_obs: int = 3_000_000,
    noise: float = 0.3,
    zipf: float = 1.0,
    bias_sd: float = 0.1,
    mu: float = 3.5,
    test_frac: float = 0.1,
) -> dict:
    """The recipe of shared/bench/make_ratings.py (same model and parameters)."""
    rng = np.random.default_rng(seed)
    sd = rank**-0.25
    u = rng.normal(0.0, sd, (n_users, rank))
    v = rng.normal(0.0, sd, (n_items, rank))
    bu, bi = rng.normal(0.0, bias_sd, n_users), rng.normal(0.0, bias_sd, n_items)
    w = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** zipf
    p = np.empty(n_items)
    p[rng.permutation(n_items)] = w / w.sum()
    keys = np.empty(0, np.int64)
    while keys.size < n_obs:
        extra = int((n_obs - keys.size) * 1.3) + 10_000
        uu = rng.integers(0, n_users, extra, dtype=np.int64)
        keys = np.unique(np.concatenate([keys, uu * n_items + rng.choice(n_items, extra, p=p)]))
    keys = rng.choice(keys, n_obs, replace=False)
    user, item = keys // n_items, keys % n_items
    signal = mu + bu[user] + bi[item] + np.einsum("nk,nk->n", u[user], v[item])
    rating = np.clip(signal + rng.normal(0.0, noise, n_obs), 0.5, 5.0)
    test = np.zeros(n_obs, bool)
    test[rng.permutation(n_obs)[: int(round(test_frac * n_obs))]] = True
    oracle = float(np.sqrt(np.mean((np.clip(signal[test], 0.5, 5.0) - rating[test]) ** 2)))
    return {
        "user": user,
        "item": item,
        "rating": rating,
        "test": test,
        "shape": (n_users, n_items),
        "oracle_rmse": oracle,
    }


def bench_completion(
    weight_decays: tuple[float, ...] = (0.3, 1.0, 3.0),
    max_iter: int = 10,
    biased_decays: tuple[float, ...] = (1.0,),
    biased_iter: int = 8,
    seed: int = 0,
    workdir: str | None = None,
    scale: float = 1.0,
    say: Callable[[str], None] = print,
) -> list[dict]:
    import dlowrank
    from dlowrank.io.ratings import write_ratings

    n_users, n_items, n_obs = int(60_000 * scale), int(12_000 * scale), int(3_000_000 * scale)
    say(f"completion: ratings recipe {n_users} x {n_items}, {n_obs} ratings")
    data = ratings_recipe(seed, n_users=n_users, n_items=n_items, n_obs=n_obs)
    train, test = ~data["test"], data["test"]
    rows = [{"method": "oracle (true signal, clipped)", "rmse": data["oracle_rmse"]}]
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = os.path.join(tmp, "train.zarr")
        write_ratings(
            path,
            data["user"][train],
            data["item"][train],
            data["rating"][train],
            shape=data["shape"],
        )
        for alpha in weight_decays:
            say(f"completion: dlowrank als rank 16, weight_decay {alpha}")
            with PeakMemory() as mem:
                start = time.perf_counter()
                r = dlowrank.factorize(
                    path, 16, weight_decay=alpha, max_iter=max_iter, seed=seed, tol=0.0
                )
                seconds = time.perf_counter() - start
            rmse = dlowrank.rmse(r, data["user"][test], data["item"][test], data["rating"][test])
            rows.append(
                {
                    "method": f"dlowrank als rank 16, weight_decay {alpha}, {max_iter} iterations",
                    "rmse": rmse,
                    "seconds": seconds,
                    "passes": r.passes,
                    "peak_mb": mem.peak / 1e6,
                }
            )
        for alpha in biased_decays:
            say(f"completion: dlowrank MatrixCompletion rank 16, biases, weight_decay {alpha}")
            from dlowrank.estimators import MatrixCompletion

            est = MatrixCompletion(
                16, weight_decay=alpha, max_iter=biased_iter, tol=0.0, random_state=seed
            )
            with PeakMemory() as mem:
                start = time.perf_counter()
                est.fit(path)
                seconds = time.perf_counter() - start
            args = (data["user"][test], data["item"][test], data["rating"][test])
            rows.append(
                {
                    "method": f"dlowrank MatrixCompletion rank 16, biases, weight_decay {alpha}, "
                    f"{biased_iter} iterations",
                    "rmse": est.rmse(*args),
                    "rmse_clipped": est.set_params(clip=(0.5, 5.0)).rmse(*args),
                    "seconds": seconds,
                    "passes": est.n_passes_,
                    "peak_mb": mem.peak / 1e6,
                }
            )
    return rows


def bench_gd_vs_als(
    m: int = 20_000,
    n: int = 2_000,
    weight_decay: float = 0.1,
    rank: int = 25,
    seed: int = 0,
    say: Callable[[str], None] = print,
) -> list[dict]:
    """Passes until ||U V^T - X*||_F <= 1e-4 ||X*||_F, X* = svt(A, weight_decay)."""
    import dlowrank
    from dlowrank.algorithms import factorize as fz
    from dlowrank.engine.passes import PassEngine
    from dlowrank.io.source import open_source

    say(f"gd vs als: {m} x {n}, decaying spectrum, weight decay {weight_decay}")
    # s_i = 0.9^i: 22 singular values exceed 0.1, so rank 25 can reach the optimum; the
    # noise (top singular value about 1e-4 (sqrt(m) + sqrt(n)) = 0.02) stays below it
    a = dlowrank.make_matrix(
        (m, n), 200, decay=0.9, noise=1e-4, seed=seed, chunks=(2_000, n)
    ).array.compute()
    oracle = dlowrank.svt(a, weight_decay)
    p, q = oracle.u * oracle.s, oracle.vt.T
    target = np.linalg.norm(oracle.s)

    def close(u, v: np.ndarray) -> bool:
        # ||U V^T - P Q^T||_F^2 from k x k Grams, without the dense product
        u = u.to_numpy()  # the row factor's panels (this benchmark's matrices are small)
        d2 = (
            np.sum((u.T @ u) * (v.T @ v))
            + np.sum((p.T @ p) * (q.T @ q))
            - 2 * np.sum((u.T @ p) * (v.T @ q))
        )
        return float(np.sqrt(max(d2, 0.0))) <= 1e-4 * target

    rows = []
    for name, init in (("als", "svd"), ("als", "random"), ("gd", "random")):
        engine = PassEngine(open_source(a), layout="panel")
        seq = np.random.SeedSequence(seed)
        if init == "svd":
            u, s, vt = fz.svd_init(engine, rank, seq)
            st = fz.State(u.times(np.diag(np.sqrt(s))), vt.T * np.sqrt(s))
        else:
            st = fz.State(*fz.random_init(engine, rank, seq, 1e-2))
        start = time.perf_counter()
        if name == "als":
            st = fz.als(engine, st, weight_decay, False, 5000, 0.0, monitor=close)
        else:  # as dlowrank.factorize(method="gd") does: the start scaled to A
            st = fz.gradient_descent(
                engine, st, weight_decay, False, 5000, 0.0, monitor=close, rescale=init == "random"
            )
        rows.append(
            {
                "method": f"{name} from {init} factors",
                "passes": engine.passes,
                "reached": bool(close(st.u, st.v)),
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def run_factorization_bench(
    *, workdir: str | None = None, scale: float = 1.0, say: Callable[[str], None] = print
) -> dict[str, Any]:
    m = int(50_000 * scale)
    return {
        "nmf": bench_nmf(m=m, workdir=workdir, say=say),
        "completion": bench_completion(workdir=workdir, scale=scale, say=say),
        "gd_vs_als": bench_gd_vs_als(
            m=int(20_000 * scale), n=int(2_000 * max(scale, 0.1)), say=say
        ),
    }


def format_factorization(results: dict) -> str:
    lines = []
    for suite, rows in results.items():
        lines.append(f"[{suite}]")
        for r in rows:
            cells = [
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r.items()
                if k != "method"
            ]
            lines.append(f"  {r['method']}: " + ", ".join(cells))
    return "\n".join(lines)
