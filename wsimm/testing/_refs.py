"""Reference scores for synthetic MIL cohorts, on the same patient-level folds a MIL model is
trained on: what a linear model on the bag mean reaches, and what an instance classifier that
is shown the true witness tiles reaches. ``benchmarks/bench_mil.py`` and the acceptance tests
put wsimm's models beside them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from wsimm.testing._bags import MILCohort

__all__ = ["patient_bags", "reference_aucs", "top_k_witness_share"]


def patient_bags(c: MILCohort) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Patient id -> (all its tiles as float32, witness flag per tile)."""
    out = {}
    for pid, d in c.labels.groupby("patient_id", sort=False):
        sids = d["slide_id"].tolist()
        out[pid] = (
            np.concatenate([c.bags[s] for s in sids]).astype(np.float32),
            np.concatenate([c.tile_signal[s] for s in sids]),
        )
    return out


def reference_aucs(c: MILCohort, splits: pd.DataFrame, *, oracle: bool = True) -> dict:
    """Per-fold test AUCs (against the recorded grade) of

    * ``lr_mean``: logistic regression on the standardised mean of each patient's tiles, the
      statistics from training patients and C chosen on the validation patients;
    * ``oracle``: a logistic regression on tiles labelled with the true witness flag (training
      patients' tiles only); a patient scores the mean of its 10 highest tile scores;
    * ``oracle_mlp``: a one-hidden-layer network on the same witness-labelled tiles
      (standardised with the training tiles' statistics, sklearn's early stopping on a
      held-out tenth of them); a patient scores the mean of its tiles' witness probabilities,
      the share of witnesses it is estimated to hold. Where the generator renders tiles through
      a nonlinear map (``make_latent_cohort``) a linear tile scorer understates what the
      witness labels allow, and the top-10 score is pulled up in large negative bags by their
      background's tails; the share is not.

    ``splits`` has ``fold``, ``patient_id``, ``set`` (train / val / test), as ``wsimm train``
    writes them.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier

    bags = patient_bags(c)
    grade = c.patients.set_index("patient_id")["grade"]
    mean = {p: x.mean(0) for p, (x, _) in bags.items()}
    out: dict[str, list[float]] = {"lr_mean": [], "oracle": [], "oracle_mlp": []}
    for _k, d in splits.groupby("fold", sort=True):
        ids = {s: d.loc[d["set"] == s, "patient_id"].tolist() for s in ("train", "val", "test")}
        y = {s: grade.loc[ids[s]].to_numpy() for s in ids}
        xm = {s: np.stack([mean[p] for p in ids[s]]) for s in ids}
        mu, sd = xm["train"].mean(0), xm["train"].std(0) + 1e-8
        best_auc, best = -1.0, None
        for C in 10.0 ** np.arange(-3, 3):
            m = LogisticRegression(C=C, max_iter=2000).fit((xm["train"] - mu) / sd, y["train"])
            auc = roc_auc_score(y["val"], m.decision_function((xm["val"] - mu) / sd))
            if auc > best_auc:
                best_auc, best = auc, m
        out["lr_mean"].append(
            float(roc_auc_score(y["test"], best.decision_function((xm["test"] - mu) / sd)))
        )
        if oracle:
            xt = np.concatenate([bags[p][0] for p in ids["train"]])
            wt = np.concatenate([bags[p][1] for p in ids["train"]])
            inst = LogisticRegression(max_iter=2000, class_weight="balanced").fit(xt, wt)
            top = [np.sort(inst.decision_function(bags[p][0]))[-10:].mean() for p in ids["test"]]
            out["oracle"].append(float(roc_auc_score(y["test"], top)))
            mu_t, sd_t = xt.mean(0), xt.std(0) + 1e-6
            net = MLPClassifier(
                hidden_layer_sizes=(128,), early_stopping=True, max_iter=100, random_state=0
            ).fit((xt - mu_t) / sd_t, wt)
            share = [
                net.predict_proba((bags[p][0] - mu_t) / sd_t)[:, 1].mean() for p in ids["test"]
            ]
            out["oracle_mlp"].append(float(roc_auc_score(y["test"], share)))
    return out


def top_k_witness_share(
    attention: dict[str, np.ndarray], witness: dict[str, np.ndarray], k: int = 10
) -> float:
    """Mean share of witnesses among each patient's ``k`` most attended tiles. ``attention``
    maps a patient to its tiles' attention (``(n,)``, or ``(n, branches)``: the largest
    branch counts), in the tile order of ``witness`` (:func:`patient_bags`)."""
    shares = []
    for p, a in attention.items():
        a = np.asarray(a)
        a = a if a.ndim == 1 else a.max(1)
        shares.append(float(witness[p][np.argsort(-a)[:k]].mean()))
    return float(np.mean(shares)) if shares else float("nan")
