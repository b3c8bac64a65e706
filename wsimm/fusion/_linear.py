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

__all__ = ["LinearBaseline", "WideWeights", "design_matrix"]


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
class WideWeights:
    """A linear model over a fusion network's inputs: ``num`` ``(clinical variables, K)``
    times each standardised numeric value, ``cat`` ``(category slots, K)`` per category,
    ``omics[assay]`` ``(genes, K)`` over the standardised genes minus ``omics_shift`` ``(K,)``
    (the omics term of a patient at the training mean is 0), and ``bias`` ``(K,)``."""

    num: np.ndarray
    cat: np.ndarray
    omics: dict[str, np.ndarray]
    omics_shift: np.ndarray
    bias: np.ndarray


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
            # the exact solver: a randomized one makes the fit depend on the row order
            self.pca = PCA(k, svd_solver="full").fit(z)
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

    def state(self) -> dict[str, np.ndarray]:
        """What the fit learnt, as arrays (written per fold next to a baseline's
        predictions): the design columns, the coefficients (and intercepts), the PCA."""
        out = {"columns": np.asarray(self.columns, dtype=str)}
        if self.task == "survival":
            out["coef"] = np.asarray(self.coef, np.float64)
        else:
            out["coef"] = np.asarray(self.model.coef_, np.float64)
            out["intercept"] = np.asarray(self.model.intercept_, np.float64)
        if self.pca is not None:
            out["pca_mean"] = self.pca.mean_
            out["pca_components"] = self.pca.components_
        return out

    def wide_weights(self, n_outputs: int) -> WideWeights:
        """This fitted model written over a fusion network's own inputs (standardised clinical
        values and category slots, standardised genes per assay), so the network can carry it
        as its wide part: the same linear predictor, ``n_outputs`` wide (a Cox risk is added
        to every output; class logits column by column)."""
        pre = self.pre
        if self.task == "survival":
            coef = self.coef[:, None] * np.ones((1, n_outputs))
            bias = np.zeros(n_outputs)
        else:
            c = np.atleast_2d(self.model.coef_)[:, : len(self.columns)]  # no columns: none
            coef = np.zeros((len(self.columns), n_outputs))
            bias = np.zeros(n_outputs)
            cls = self.model.classes_
            if c.shape[0] == 1:  # binary: one logit, for the second class
                coef[:, cls[1]] = c[0]
                bias[cls[1]] = self.model.intercept_[0]
            else:
                coef[:, cls] = c.T
                bias[cls] = self.model.intercept_
        w = dict(zip(self.columns, coef, strict=True))
        offs, n_slots = pre.clinical_slots()
        num = np.zeros((len(pre.clinical_columns), n_outputs))
        cat = np.zeros((n_slots, n_outputs))
        for i, c in enumerate(pre.clinical_columns):
            if c in pre.clin_num:
                num[i] = w.get(c, 0.0)
            else:  # slot 0 is "unseen": no one-hot column, no weight
                for j, cat_name in enumerate(pre.clin_cat[c]):
                    cat[offs[c] + 1 + j] = w.get(f"{c}={cat_name}", 0.0)
        omics: dict[str, np.ndarray] = {}
        shift = np.zeros(n_outputs)
        if self.pca is not None:
            pcs = np.stack(
                [w.get(f"PC{i + 1}", np.zeros(n_outputs)) for i in range(self.pca.n_components_)]
            )
            full = self.pca.components_.T @ pcs  # genes of every assay x outputs
            shift = self.pca.mean_ @ full
            start = 0
            for a in pre.genes:
                n = len(pre.genes[a])
                omics[a] = full[start : start + n]
                start += n
        return WideWeights(num, cat, omics, shift, bias)

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
