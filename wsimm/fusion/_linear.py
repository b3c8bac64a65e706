"""The linear baselines a statistician fits first: a Cox model (survival; lifelines) or a
multinomial logistic regression (grading; scikit-learn) on clinical variables, optionally with
omics reduced by a PCA fitted on the training fold."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wsimm.errors import MissingDependencyError
from wsimm.fusion._inputs import Modalities, Preprocessor

__all__ = ["LinearBaseline", "design_matrix"]


def design_matrix(
    mods: Modalities, pre: Preprocessor, pids: list[str], *, pca: Any = None
) -> pd.DataFrame:
    """Clinical columns (numeric standardised with training statistics, missing values at
    the training mean; categoricals one-hot over the training categories) and, with ``pca``,
    the principal components of the standardised omics."""
    cols: dict[str, np.ndarray] = {}
    if mods.clinical is not None:
        clin = mods.clinical.reindex(pids)
        for c, (mu, sd) in pre.clin_num.items():
            v = pd.to_numeric(clin[c], errors="coerce").to_numpy(np.float64)
            cols[c] = np.nan_to_num((v - mu) / sd, nan=0.0)
        for c, cats in pre.clin_cat.items():
            s = clin[c].astype(object).where(clin[c].notna(), None)
            for cat in cats:  # every training category (the penalty handles collinearity)
                cols[f"{c}={cat}"] = (s.astype(str) == cat).to_numpy(np.float64)
    if pca is not None:
        z = omics_block(mods, pre, pids)
        pcs = pca.transform(z)
        for i in range(pcs.shape[1]):
            cols[f"PC{i + 1}"] = pcs[:, i]
    return pd.DataFrame(cols, index=pids)


def omics_block(mods: Modalities, pre: Preprocessor, pids: list[str]) -> np.ndarray:
    """All standardised omics side by side, ``(patients, genes of every assay)``."""
    assert mods.omics is not None
    return np.concatenate([pre.omics_matrix(mods.omics, a, pids)[0] for a in pre.genes], 1)


@dataclass
class LinearBaseline:
    """Fit on training patients, then ``predict`` gives a risk (survival: the Cox linear
    predictor) or class probabilities (grading)."""

    task: str
    use_omics: bool = False
    n_components: int = 10
    penalizer: float = 0.1

    def fit(
        self, mods: Modalities, pre: Preprocessor, table: pd.DataFrame, n_classes: int = 2
    ) -> LinearBaseline:
        pids = table["patient_id"].tolist()
        self.pre, self.mods = pre, mods
        self.pca = None
        if self.use_omics and mods.omics is not None and pre.genes:
            from sklearn.decomposition import PCA

            z = omics_block(mods, pre, pids)
            k = int(min(self.n_components, z.shape[0] - 1, z.shape[1]))
            self.pca = PCA(k, random_state=0).fit(z)
        X = design_matrix(mods, pre, pids, pca=self.pca)
        self.columns = [c for c in X.columns if X[c].std() > 1e-12]
        X = X[self.columns]
        self.n_classes = n_classes
        if self.task == "survival":
            try:
                from lifelines import CoxPHFitter
            except ImportError as e:
                raise MissingDependencyError(
                    "lifelines", extra="fusion", feature="the Cox baselines"
                ) from e
            df = X.assign(_time=table["time"].to_numpy(), _event=table["event"].to_numpy())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # lifelines convergence chatter
                self.model = CoxPHFitter(penalizer=self.penalizer).fit(df, "_time", "_event")
            self.coef = self.model.params_.reindex(self.columns).fillna(0.0).to_numpy()
        else:
            from sklearn.linear_model import LogisticRegression

            y = table["y"].to_numpy()
            self.model = LogisticRegression(C=1.0 / max(self.penalizer, 1e-6), max_iter=2000)
            self.model.fit(X.to_numpy() if len(self.columns) else np.zeros((len(X), 1)), y)
        return self

    def predict(self, pids: list[str]) -> np.ndarray:
        X = design_matrix(self.mods, self.pre, pids, pca=self.pca).reindex(
            columns=self.columns, fill_value=0.0
        )
        if self.task == "survival":
            return X.to_numpy() @ self.coef
        xa = X.to_numpy() if len(self.columns) else np.zeros((len(X), 1))
        p = np.zeros((len(pids), self.n_classes))
        p[:, self.model.classes_] = self.model.predict_proba(xa)
        return p
