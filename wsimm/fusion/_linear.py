"""The linear baselines a statistician fits first: a Cox model (survival; lifelines) or a
multinomial logistic regression (grading; scikit-learn) on clinical variables, optionally with
omics reduced by a PCA fitted on the training fold."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from wsimm.errors import MissingDependencyError
from wsimm.fusion._inputs import Modalities, Preprocessor

__all__ = ["LinearBaseline", "SlideTerms", "WideWeights", "design_matrix"]


def design_matrix(
    mods: Modalities,
    pre: Preprocessor,
    pids: list[str],
    *,
    pca: Any = None,
    slides: SlideTerms | None = None,
) -> pd.DataFrame:
    """Clinical columns (numeric standardised with training statistics, missing values at
    the training mean; categoricals one-hot over the training categories), with ``pca`` the
    principal components of the standardised omics and, with ``slides``, the principal
    components of each patient's mean tile (``S1``...) and their products with the first
    omics components (``S1xPC1``...; 0 for a patient without a slide or without omics)."""
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
        if slides is not None:
            s = slides.scores(pids)
            has_o = np.isin(pids, list(mods.omics.patients)) if mods.omics is not None else 0
            for i in range(s.shape[1]):
                cols[f"S{i + 1}"] = s[:, i]
            for i in range(s.shape[1]):
                for j in range(min(slides.n_cross, pcs.shape[1])):
                    cols[f"S{i + 1}xPC{j + 1}"] = s[:, i] * pcs[:, j] * has_o
    return pd.DataFrame(cols, index=pids)


@dataclass
class SlideTerms:
    """The slide side of a linear model: a PCA of each patient's mean (normalised) tile,
    fitted on the training patients that have a slide; ``n_cross`` of the omics components
    are crossed with its components (Wide & Deep's cross-product features: a linear model
    that can say *which tiles matter depends on the omics*)."""

    means: pd.DataFrame  # patients x tile features: the mean over a patient's slides' tiles
    n_components: int = 8
    n_cross: int = 4
    #: tile prototypes ``(P, D)`` when ``means`` holds prototype shares: these are then only
    #: standardised (every prototype kept), not reduced by a PCA
    prototypes: np.ndarray | None = None

    def fit(self, pids: list[str]) -> SlideTerms:
        from sklearn.decomposition import PCA

        x = self.means.reindex([p for p in pids if p in self.means.index]).to_numpy(np.float64)
        if self.prototypes is not None:
            self.pca = _Standardise(x)
            return self
        k = int(min(self.n_components, max(1, x.shape[0] - 1), x.shape[1]))
        self.pca = PCA(k, svd_solver="full").fit(x)
        return self

    def scores(self, pids: list[str]) -> np.ndarray:
        """``(len(pids), components)``; 0 (the training mean) for a patient without a slide."""
        x = self.means.reindex(pids)
        has = x.notna().all(1).to_numpy()
        out = np.zeros((len(pids), self.pca.n_components_))
        if has.any():
            out[has] = self.pca.transform(x.to_numpy(np.float64)[has])
        return out


class _Standardise:
    """The PCA interface over a plain standardisation (training mean and sd; a column without
    spread gets weight 0): ``mean_``, ``components_`` ``(k, D)``, ``n_components_``."""

    def __init__(self, x: np.ndarray) -> None:
        self.mean_ = x.mean(0)
        sd = x.std(0)
        self.components_ = np.diag(np.where(sd > 1e-12, 1.0 / np.maximum(sd, 1e-12), 0.0))
        self.n_components_ = x.shape[1]

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) @ self.components_.T


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
    #: slide terms (``None`` without): PCA mean ``(D,)`` and components ``(D, S)`` of the
    #: patient's mean tile, their weights ``(S, K)``; the crossed omics components as
    #: ``cross_omics[assay]`` ``(genes, C)`` minus ``cross_shift`` ``(C,)``, and the weights
    #: ``(S * C, K)`` of the products (slide component major)
    slide_mean: np.ndarray | None = None
    slide_comp: np.ndarray | None = None
    slide_w: np.ndarray | None = None
    cross_omics: dict[str, np.ndarray] | None = None
    cross_shift: np.ndarray | None = None
    cross_w: np.ndarray | None = None
    #: with tile prototypes (``P, D``, in the tile space the network is given): the slide
    #: terms read the patient's prototype shares, ``slide_mean`` ``(P,)``, ``slide_comp``
    #: ``(P, P)`` (a standardisation)
    prototypes: np.ndarray | None = None

    def for_normalised_tiles(self, mean: np.ndarray, std: np.ndarray) -> WideWeights:
        """The same model for a network whose tiles arrive as ``(x - mean) / std``: the slide
        terms' centre and components rewritten so the scores do not change (prototype shares
        need nothing: the prototypes are fitted in the network's own tile space)."""
        if self.slide_comp is None or self.prototypes is not None:
            return self
        m, s = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        return replace(
            self, slide_mean=(self.slide_mean - m) / s, slide_comp=s[:, None] * self.slide_comp
        )

    def for_preprocessor(self, own: Preprocessor, net: Preprocessor) -> WideWeights | None:
        """The same model for a network that standardises its inputs with ``net`` rather
        than ``own``, the preprocessor it was fitted with (the network's is fitted on its
        training patients, a refit on training + validation patients has its own). Each gene
        and numeric clinical value is one rescaling and shift away; the shifts go to
        ``omics_shift`` / ``cross_shift`` and the numeric column's category slot, so each
        modality's term does not change (but for values clipped at 10 sd or missing: those
        sit at each preprocessor's own training mean). ``None`` where the two keep other
        genes, clinical columns or categories: then no rewrite is exact."""
        if (
            own.genes != net.genes
            or own.clinical_columns != net.clinical_columns
            or own.clin_cat != net.clin_cat
        ):
            return None
        omics, cross = {}, dict(self.cross_omics) if self.cross_omics is not None else None
        shift, cshift = self.omics_shift.copy(), self.cross_shift
        for a, w in self.omics.items():  # own z = net z * r + d, gene by gene
            so, sn = own.omics_std[a].astype(np.float64), net.omics_std[a].astype(np.float64)
            r = sn / so
            d = (net.omics_mean[a].astype(np.float64) - own.omics_mean[a]) / so
            omics[a] = w * r[:, None]
            shift = shift - d @ w
            if cross is not None and cshift is not None:
                cross[a] = self.cross_omics[a] * r[:, None]  # type: ignore[index]
                cshift = cshift - d @ self.cross_omics[a]  # type: ignore[index]
        num, cat = self.num.copy(), self.cat.copy()
        offs, _ = net.clinical_slots()
        for i, c in enumerate(net.clinical_columns):
            if c in net.clin_num:  # the shift sits in the column's own slot: a patient
                (mo, so_), (mn, sn_) = own.clin_num[c], net.clin_num[c]  # without the value
                num[i] = self.num[i] * sn_ / so_  # has no node and gets neither
                cat[offs[c]] = cat[offs[c]] + self.num[i] * (mn - mo) / so_
        return replace(
            self, num=num, cat=cat, omics=omics, omics_shift=shift,
            cross_omics=cross, cross_shift=cshift,
        )  # fmt: skip


@dataclass
class LinearBaseline:
    """Fit on training patients, then ``predict`` gives a risk (survival: the Cox linear
    predictor) or class probabilities (grading)."""

    task: str
    use_omics: bool = False
    n_components: int = 10
    penalizer: float = 0.1
    #: slide terms (and their omics crosses); needs ``use_omics`` for the crosses
    slides: SlideTerms | None = None

    def fit(
        self, mods: Modalities, pre: Preprocessor, table: pd.DataFrame, n_classes: int = 2
    ) -> LinearBaseline:
        pids = table["patient_id"].tolist()
        self.pre, self.mods = pre, mods
        self.pca = None
        if self.slides is not None:
            self.slides.fit(pids)
        if self.use_omics and mods.omics is not None and pre.genes:
            from sklearn.decomposition import PCA

            z = omics_block(mods, pre, pids)
            k = int(min(self.n_components, z.shape[0] - 1, z.shape[1]))
            # the exact solver: a randomized one makes the fit depend on the row order
            self.pca = PCA(k, svd_solver="full").fit(z)
        X = design_matrix(mods, pre, pids, pca=self.pca, slides=self._slides())
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
            # the penalty per patient, as lifelines' Cox has it (its penalizer scales the
            # mean log-likelihood; scikit-learn's C the summed one): C = 1 / (penalizer * n)
            c = 1.0 / max(self.penalizer * len(y), 1e-6)
            self.model = LogisticRegression(C=c, max_iter=2000)
            self.model.fit(X.to_numpy() if len(self.columns) else np.zeros((len(X), 1)), y)
        return self

    def _slides(self) -> SlideTerms | None:
        return self.slides if self.pca is not None else None

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
        if self._slides() is not None:
            out["slide_pca_mean"] = self.slides.pca.mean_  # type: ignore[union-attr]
            out["slide_pca_components"] = self.slides.pca.components_  # type: ignore[union-attr]
            if self.slides.prototypes is not None:  # type: ignore[union-attr]
                out["slide_prototypes"] = self.slides.prototypes  # type: ignore[union-attr]
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
        out = WideWeights(num, cat, omics, shift, bias)
        st = self._slides()
        if st is not None:
            assert self.pca is not None
            k, c = st.pca.n_components_, min(st.n_cross, self.pca.n_components_)
            zero = np.zeros(n_outputs)
            out.slide_mean = st.pca.mean_
            out.slide_comp = st.pca.components_.T
            out.prototypes = st.prototypes
            out.slide_w = np.stack([w.get(f"S{i + 1}", zero) for i in range(k)])
            qc = self.pca.components_[:c].T  # genes of every assay x crossed components
            out.cross_shift = self.pca.mean_ @ qc
            out.cross_omics, start = {}, 0
            for a in pre.genes:
                n = len(pre.genes[a])
                out.cross_omics[a] = qc[start : start + n]
                start += n
            out.cross_w = np.stack(
                [w.get(f"S{i + 1}xPC{j + 1}", zero) for i in range(k) for j in range(c)]
            )
        return out

    def predict(self, pids: list[str]) -> np.ndarray:
        X = design_matrix(self.mods, self.pre, pids, pca=self.pca, slides=self._slides()).reindex(
            columns=self.columns, fill_value=0.0
        )
        if self.task == "survival":
            return X.to_numpy() @ self.coef
        xa = X.to_numpy() if len(self.columns) else np.zeros((len(X), 1))
        p = np.zeros((len(pids), self.n_classes))
        p[:, self.model.classes_] = self.model.predict_proba(xa)
        return p
