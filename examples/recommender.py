"""A recommender from sparse ratings: weight decay, held-out RMSE, NMF topics, explanations.

Synthetic ratings (the recipe of the benchmark: low rank plus user and item biases,
Zipf item popularity, noise sd 0.3) are stored as a sparse Zarr ratings group and
never densified. A weight-decay factorization (ALS, one pass per iteration)
predicts held-out ratings; an NMF of the same ratings gives non-negative "topics";
``dlowrank.contributions`` explains a good and a bad recommendation by the topics
behind it.

    python examples/recommender.py [--out figures]
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from _common import parser, pyplot, save_figure

import dlowrank
from dlowrank.app.bench_factor import ratings_recipe
from dlowrank.io.ratings import write_ratings


def main() -> None:
    args = parser(__doc__).parse_args()
    size = (1_500, 300, 60_000) if args.tiny else (20_000, 3_000, 800_000)
    data = ratings_recipe(0, n_users=size[0], n_items=size[1], n_obs=size[2])
    train, test = ~data["test"], data["test"]
    users, items, ratings = data["user"], data["item"], data["rating"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ratings.zarr")
        write_ratings(path, users[train], items[train], ratings[train], shape=data["shape"])
        rmse = {}
        for alpha in (0.3, 1.0, 3.0):
            fit = dlowrank.factorize(path, 16, weight_decay=alpha, max_iter=10, seed=0)
            rmse[alpha] = dlowrank.rmse(fit, users[test], items[test], ratings[test])
            print(f"weight decay {alpha}: held-out RMSE {rmse[alpha]:.4f} ({fit.passes} passes)")
        print(
            f"oracle (true signal): {data['oracle_rmse']:.4f}; predicting the mean: "
            f"{np.sqrt(np.mean((ratings[test] - ratings[train].mean()) ** 2)):.4f}"
        )
        # NMF of the filled-in matrix: non-negative user and item topic weights
        topics = dlowrank.nmf(_dense_for_nmf(data, train), 8, seed=0, max_iter=100)
    pred = dlowrank.predict(topics, users[test], items[test])
    errors = np.abs(pred - ratings[test])
    for label, t in (("good", int(np.argmin(errors))), ("bad", int(np.argmax(errors)))):
        i, j = int(users[test][t]), int(items[test][t])
        terms = dlowrank.contributions(topics, i, j)
        top = ", ".join(f"topic {c}: {v:+.2f}" for c, v in terms[:3])
        print(
            f"{label} recommendation: user {i}, item {j}: predicted {pred[t]:.2f}, actual "
            f"{ratings[test][t]:.2f}; carried by {top}"
        )
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(list(rmse), list(rmse.values()), "o-")
    ax1.axhline(data["oracle_rmse"], color="gray", ls="--", label="oracle")
    ax1.set(xscale="log", xlabel="weight decay", ylabel="held-out RMSE", title="ALS rank 16")
    # one labelled tick per weight decay tried; no minor labels to overlap them
    ax1.set_xticks(list(rmse), [f"{a:g}" for a in rmse])
    ax1.xaxis.set_minor_formatter(plt.NullFormatter())
    ax1.legend()
    # each topic scaled to its own largest weight: topics differ in overall scale (the
    # first carries the users' mean rating), and unscaled one solid row hides the rest
    weights = topics.v[:40]
    scaled = weights / np.maximum(weights.max(axis=0), np.finfo(float).tiny)
    shown = ax2.imshow(scaled.T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax2.set(
        xlabel="item",
        ylabel="topic",
        title="NMF item weights per topic (first 40 items)",
        yticks=range(weights.shape[1]),
    )
    fig.colorbar(shown, ax=ax2, label="weight / the topic's largest")
    save_figure(fig, args.out, "recommender.png")


def _dense_for_nmf(data: dict, train: np.ndarray) -> np.ndarray:
    """NMF needs every entry: unrated entries are filled with the user's mean rating."""
    users, items, ratings = data["user"][train], data["item"][train], data["rating"][train]
    m, n = data["shape"]
    dense = np.zeros((m, n))
    counts = np.zeros((m, n))
    np.add.at(dense, (users, items), ratings)
    np.add.at(counts, (users, items), 1)
    means = np.bincount(users, ratings, m) / np.maximum(np.bincount(users, minlength=m), 1)
    return np.where(counts > 0, dense / np.maximum(counts, 1), means[:, None])


if __name__ == "__main__":
    main()
