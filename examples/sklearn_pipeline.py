"""dlowrank inside scikit-learn: TruncatedSVD in a Pipeline, tuned by GridSearchCV.

Digits (1,797 images of 8 x 8 pixels): a dlowrank ``TruncatedSVD`` reduces the 64
pixels to a few components, a logistic regression classifies them, and
``GridSearchCV`` picks the number of components by 3-fold cross-validation. The
same estimator takes a Zarr path or a dask array when the data do not fit in
memory; here they do, and it behaves as any scikit-learn transformer.

    python examples/sklearn_pipeline.py [--tiny]
"""

from __future__ import annotations

import numpy as np
from _common import parser
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import dlowrank


def main() -> None:
    args = parser(__doc__, figures=False).parse_args()
    x, y = load_digits(return_X_y=True)
    grid = [4, 8, 16, 32]
    if args.tiny:
        x, y, grid = x[:600], y[:600], [4, 16]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    pipe = Pipeline(
        [
            ("svd", dlowrank.TruncatedSVD(random_state=0)),
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(max_iter=2000)),
        ]
    )
    search = GridSearchCV(pipe, {"svd__n_components": grid}, cv=3)
    search.fit(x_train, y_train)
    for k, score in zip(grid, search.cv_results_["mean_test_score"], strict=True):
        print(f"n_components {k:3d}: cross-validated accuracy {score:.3f}")
    best = search.best_estimator_.named_steps["svd"]
    print(
        f"best n_components {search.best_params_['svd__n_components']}: test accuracy "
        f"{search.score(x_test, y_test):.3f}; its SVD kept "
        f"{np.sum(best.explained_variance_ratio_):.1%} of the variance in {best.n_passes_} "
        f"passes (relative error {best.rel_error_:.3f})"
    )


if __name__ == "__main__":
    main()
