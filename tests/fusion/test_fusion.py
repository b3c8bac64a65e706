"""wsimm.fusion on small real torch-geometric graphs: inputs, preprocessing fitted on training
patients only, graph construction with absent modalities, shapes and gradient flow."""

from __future__ import annotations

import re
import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch_geometric")

import torch
from torch_geometric.data import Batch

import wsimm
from wsimm.errors import DataError
from wsimm.fusion import (
    FusionNet,
    FusionSpec,
    Modalities,
    Preprocessor,
    build_graphs,
    read_clinical,
    read_gene_groups,
    read_omics,
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    d = tmp_path_factory.mktemp("fusion")
    co = wsimm.make_cohort(24, seed=3, tiles_per_slide=(20, 40), feature_dim=16)
    return co, co.save(d)


def _mods(co, paths) -> Modalities:
    clin, spec = read_clinical(
        paths["clinical"], patient_col="patient_id", columns=None, exclude=["patient_id"]
    )
    slides = {}
    for p, s in zip(co.labels["patient_id"], co.labels["slide_id"], strict=True):
        if isinstance(s, str) and s:
            slides.setdefault(p, []).append(s)
    return Modalities(
        slides=slides,
        omics=read_omics(paths["omics"]),
        clinical=clin,
        clinical_spec=spec,
        gene_groups=read_gene_groups(paths["gene_groups"]),
    )


def _net(mods, pre, fusion, slide_dim=16, n_outputs=3, **kw):
    spec = FusionSpec(
        fusion=fusion,
        modalities=mods.names,
        n_outputs=n_outputs,
        kind_genes=[p.shape[1] for p in pre.proj] or [len(g) for *_, g in pre.kinds],
        assays=[a for _, a, _ in pre.kinds],
        n_clinical=len(pre.clinical_columns),
        n_slots=pre.clinical_slots()[1],
        slide_dim=slide_dim,
        **kw,
    )
    net = FusionNet(spec)
    net.set_gene_index(
        [[pre.genes[a].index(x) for x in genes] for _, a, genes in pre.kinds], pre.proj
    )
    return net


def _all_patients(co, paths):
    """The cohort's modalities, patients, slide ids, preprocessing fitted on everyone, and a
    graph per patient."""
    mods = _mods(co, paths)
    pids = co.patients["patient_id"].tolist()
    slide_ids = [s for p in pids for s in mods.slides.get(p, [])]
    pre = Preprocessor.fit(mods, pids, group_pcs=4)
    graphs = build_graphs(mods, pre, pids, slide_index={s: i for i, s in enumerate(slide_ids)})
    return mods, pids, slide_ids, pre, graphs


def _tiles(co, batch, slide_ids):
    sidx = batch["slide"].sidx
    parts = [torch.from_numpy(co.bags[slide_ids[i]].astype(np.float32)) for i in sidx]
    if not parts:
        return None
    sizes = torch.as_tensor([len(p) for p in parts])
    return torch.cat(parts), torch.repeat_interleave(torch.arange(len(parts)), sizes)


def test_inputs_typing_and_groups(cohort, tmp_path):
    co, paths = cohort
    mods = _mods(co, paths)
    types = {"age": "numeric", "sex": "categorical", "stage": "categorical"}
    assert mods.clinical_spec.infer(mods.clinical) == types
    assert set(mods.omics.assays) == {"rnaseq", "cnv", "mut"}
    assert len(mods.gene_groups) == 6
    # GMT and wide-CSV gene groups give the same groups
    gmt = tmp_path / "g.gmt"
    gmt.write_text("\n".join(f"{k}\tdesc\t" + "\t".join(v) for k, v in mods.gene_groups.items()))
    assert read_gene_groups(gmt) == mods.gene_groups
    # h5ad omics: same values as the wide table
    ad = read_omics(paths["omics_h5ad"])
    pid = mods.omics.patients[0]
    np.testing.assert_allclose(
        ad.assays["rnaseq"].loc[pid].to_numpy(),
        mods.omics.assays["rnaseq"].loc[pid, ad.assays["rnaseq"].columns].to_numpy(),
        rtol=1e-6,
    )
    with pytest.raises(DataError, match="no omics columns"):
        read_omics(paths["clinical"])


def test_tables_that_would_change_a_run_unseen_say_so(cohort, tmp_path):
    """Omics values that are not numbers, a patient's repeated rows that disagree, gene
    groups that name no measured gene: each used to pass without a word (the last put every
    gene in the one ``ungrouped`` node)."""
    from wsimm.errors import ConfigError, WsimmWarning
    from wsimm.fusion import check_gene_groups
    from wsimm.train import TrainConfig, train

    _, paths = cohort
    om = pd.read_csv(paths["omics"])
    gene = next(c for c in om.columns if c.endswith("_rnaseq"))
    bad = om.astype({gene: object})
    bad.loc[2, gene] = "n/a (QC fail)"
    f = tmp_path / "text.csv"
    bad.to_csv(f, index=False)
    with pytest.warns(WsimmWarning, match=rf"^{f}: 1 value\(s\) in 1 column\(s\) .*{gene}.*QC"):
        read = read_omics(f)
    assert np.isnan(read.assays["rnaseq"].loc[str(om.loc[2, "patient_id"]), gene[:-7]])
    # a patient's rows repeated (one per slide) are fine when they agree, not when they differ
    twice = pd.concat([om, om.iloc[[4]]])
    twice.to_csv(tmp_path / "same.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WsimmWarning)
        read_omics(tmp_path / "same.csv")
    twice.iloc[-1, twice.columns.get_loc(gene)] += 1.0
    twice.to_csv(tmp_path / "differ.csv", index=False)
    pid = om.loc[4, "patient_id"]
    with pytest.warns(WsimmWarning, match=rf"patient\(s\) {pid} have several rows that differ"):
        read_omics(tmp_path / "differ.csv")
    # gene groups in another gene naming: refused before anything is written
    omics = read_omics(paths["omics"])
    groups = read_gene_groups(paths["gene_groups"])
    cases = {
        "other": ({"G": ["NOT_A_GENE", "ALSO_NOT"]}, r"the omics have e\.g\. "),
        "lower": ({k: [g.lower() for g in v] for k, v in groups.items()}, "upper/lower case"),
    }
    for name, (gg, hint) in cases.items():
        gf = tmp_path / f"{name}.csv"
        pd.DataFrame([(k, g) for k, v in gg.items() for g in v], columns=["group", "gene"]).to_csv(
            gf, index=False
        )
        out = tmp_path / f"run_{name}"
        with pytest.raises(DataError, match=rf"^{gf}: none of its \d+ gene\(s\).*{hint}"):
            train(labels=str(paths["labels"]), omics=str(paths["omics"]), gene_groups=str(gf),
                  task="survival", fusion="graph", out=str(out), quiet=True, epochs=1)  # fmt: skip
        assert not out.exists()
    with pytest.warns(WsimmWarning, match=r"1 of 7 gene group\(s\) have no gene .*\(GHOST\)"):
        check_gene_groups({**groups, "GHOST": ["NOT_A_GENE"]}, omics, "g.csv")
    with pytest.raises(ConfigError, match="--gene-groups groups the genes of --omics"):
        TrainConfig(
            labels="l.csv", clinical="c.csv", gene_groups="g.csv", fusion="graph"
        ).validate()


def test_preprocessing_sees_training_patients_only(cohort):
    co, paths = cohort
    mods = _mods(co, paths)
    ids = mods.omics.patients
    train = ids[:10]
    pre = Preprocessor.fit(mods, train)
    raw = mods.omics.assays["rnaseq"].loc[train, pre.genes["rnaseq"]].to_numpy(np.float64)
    np.testing.assert_allclose(pre.omics_mean["rnaseq"], raw.mean(0), rtol=1e-5, atol=1e-6)
    # changing a test patient's values changes nothing that was fitted
    mods.omics.assays["rnaseq"].loc[ids[-1]] += 100.0
    pre2 = Preprocessor.fit(mods, train)
    np.testing.assert_array_equal(pre.omics_mean["rnaseq"], pre2.omics_mean["rnaseq"])
    age = mods.clinical.loc[train, "age"]
    assert pre.clin_num["age"] == pytest.approx((age.mean(), age.std()))
    assert pre.to_dict() == Preprocessor.from_dict(pre.to_dict()).to_dict()


def test_absent_modalities_have_no_nodes(cohort):
    co, paths = cohort
    mods = _mods(co, paths)
    pids = co.patients["patient_id"].tolist()
    slide_ids = [s for p in pids for s in mods.slides.get(p, [])]
    pre = Preprocessor.fit(mods, pids)
    graphs = build_graphs(mods, pre, pids, slide_index={s: i for i, s in enumerate(slide_ids)})
    truth = co.patients.set_index("patient_id")
    for pid, g in zip(pids, graphs, strict=True):
        assert g["slide"].num_nodes == truth.loc[pid, "n_slides"]
        n_kinds = len(pre.kinds) if truth.loc[pid, "has_omics"] else 0
        assert g["gene_group"].num_nodes == n_kinds
        assert g["clinical"].num_nodes == 3
        assert g["patient"].num_nodes == 1
        ei = g["gene_group", "to", "patient"].edge_index
        assert ei.shape == (2, n_kinds)
        assert g["slide", "to", "gene_group"].edge_index.shape[1] == n_kinds * g["slide"].num_nodes
    assert (~truth["has_omics"]).any() and (truth["n_slides"] == 0).any()  # both cases occur
    # a missing clinical value gives no node, not a zero
    mods.clinical.loc[pids[0], "age"] = np.nan
    g0 = build_graphs(mods, pre, pids[:1], slide_index=None)[0]
    assert g0["clinical"].num_nodes == 2


@pytest.mark.parametrize("fusion", ["graph", "graph+coattention", "late", "concat", "kronecker"])
def test_shapes_masking_and_gradient_flow(cohort, fusion):
    co, paths = cohort
    fusion, _, extra = fusion.partition("+")
    kw = {"coattention": True, "contrastive": 0.5} if extra else {}
    mods, pids, slide_ids, pre, graphs = _all_patients(co, paths)
    torch.manual_seed(0)
    net = _net(mods, pre, fusion, hidden=16, heads=2, dropout=0.0, **kw)
    b = Batch.from_data_list(graphs)
    out = net(b, _tiles(co, b, slide_ids))
    assert out.logits.shape == (len(pids), 3)
    assert (out.coattn is not None) == bool(extra) and (out.align_loss is not None) == bool(extra)
    assert torch.isfinite(out.logits).all()
    if fusion == "graph":  # readout weights sum to one per patient with any node
        total = torch.zeros(len(pids))
        for t, w in out.weights.items():
            total.index_add_(0, b[t].batch, w)
        assert torch.allclose(total, torch.ones(len(pids)), atol=1e-5)
    # every modality encoder gets a gradient
    (out.logits.sum() + (out.align_loss if extra else 0)).backward()
    if extra:  # both directions of the co-attention and the alignment heads learn
        for w in (net.co_q, net.co_k, net.co_out, net.back_v, net.back_out, net.align_slide):
            assert w.weight.grad is not None and w.weight.grad.abs().sum() > 0
    enc = {
        "omics": net.kind_nets[0][0].weight,
        "clinical": net.var_emb.weight,
        "slide": net.mil.fc[0].weight,
    }
    for m, w in enc.items():
        assert w.grad is not None and w.grad.abs().sum() > 0, m

    # a patient's output depends on its own graph only (batching does not mix patients)
    net.eval()
    with torch.no_grad():
        full = net(b, _tiles(co, b, slide_ids)).logits
        one = Batch.from_data_list(graphs[5:6])
        alone = net(one, _tiles(co, one, slide_ids)).logits
    torch.testing.assert_close(full[5:6], alone, atol=1e-5, rtol=1e-4)

    # masking a modality = the patient without it: outputs match the graph built without it
    keep = {"gene_group": torch.zeros(b["gene_group"].num_nodes, dtype=torch.bool)}
    with torch.no_grad():
        masked = net(b, _tiles(co, b, slide_ids), keep=keep).logits
        g_no = build_graphs(
            mods,
            pre,
            pids,
            slide_index={s: i for i, s in enumerate(slide_ids)},
            use=("slide", "clinical"),
        )
        b_no = Batch.from_data_list(g_no)
        for k in ("omics_rnaseq", "omics_cnv", "omics_mut"):
            setattr(b_no, k, getattr(b, k))
        rebuilt = net(b_no, _tiles(co, b_no, slide_ids)).logits
    torch.testing.assert_close(masked, rebuilt, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(masked, full)


def test_hgt_layers_run(cohort):
    co, paths = cohort
    mods = _mods(co, paths)
    mods.slides = {}
    pids = co.patients["patient_id"].tolist()
    pre = Preprocessor.fit(mods, pids)
    graphs = build_graphs(mods, pre, pids, slide_index={})
    net = _net(mods, pre, "graph", hidden=16, heads=2, conv="hgt")
    out = net(Batch.from_data_list(graphs))
    assert out.logits.shape == (len(pids), 3)
    out.logits.sum().backward()
    assert net.kind_nets[0][0].weight.grad.abs().sum() > 0


def _without_slides(cohort):
    """The cohort's omics and clinical data, patients, and one outcome row per patient."""
    co, paths = cohort
    mods = _mods(co, paths)
    mods.slides = {}
    pids = co.patients["patient_id"].tolist()
    table = co.labels.drop_duplicates("patient_id").set_index("patient_id").loc[pids]
    return mods, pids, table.reset_index().rename(columns={"grade": "y"})


@pytest.mark.parametrize("task", ["survival", "grade"])
def test_wide_part_is_the_linear_model(cohort, task):
    """A network with a wide part starts as exactly the fitted linear model (Cox risk, or
    class probabilities), and leaving a modality out takes its linear term away."""
    pytest.importorskip("lifelines")
    from wsimm.fusion import LinearBaseline, design_matrix

    mods, pids, table = _without_slides(cohort)
    assert table["y"].nunique() == 3
    pre = Preprocessor.fit(mods, pids, group_pcs=4)
    k = 1 if task == "survival" else 3
    lb = LinearBaseline(task, use_omics=True).fit(mods, pre, table, n_classes=k)
    net = _net(mods, pre, "graph", hidden=16, heads=2, n_outputs=k, wide=True,
               wide_genes={a: len(g) for a, g in pre.genes.items()})  # fmt: skip
    net.set_wide(lb.wide_weights(k))
    net.eval()
    b = Batch.from_data_list(build_graphs(mods, pre, pids, slide_index={}))
    no_clin = {"clinical": torch.zeros(b["clinical"].num_nodes, dtype=torch.bool)}
    with torch.no_grad():
        logits = net(b).logits.double().numpy()
        omics_only = net(b, keep=no_clin).logits.double().numpy()
    has = np.isin(pids, mods.omics.patients)
    assert has.sum() >= 10 and (~has).sum() >= 1  # some patients lack omics
    want = lb.predict(pids)
    if task == "survival":  # the deep part starts at zero: the output is the Cox risk
        np.testing.assert_allclose(logits[has, 0], want[has], atol=1e-4)
        X = design_matrix(mods, pre, pids, pca=lb.pca)[lb.columns]
        pc = [i for i, c in enumerate(lb.columns) if c.startswith("PC")]
        np.testing.assert_allclose(
            omics_only[has, 0], X.to_numpy()[has][:, pc] @ lb.coef[pc], atol=1e-4
        )
        np.testing.assert_allclose(omics_only[~has, 0], 0.0, atol=1e-6)
    else:
        p = torch.softmax(torch.as_tensor(logits), 1).numpy()
        np.testing.assert_allclose(p[has], want[has], atol=1e-4)


@pytest.mark.parametrize("task", ["survival", "grade"])
def test_the_linear_penalty_is_per_patient_in_both_tasks(cohort, task):
    """``penalizer`` means the same for the Cox and the logistic fits: a penalty on the mean
    log-likelihood (lifelines' convention), so the same cohort with every patient counted
    three times gives (nearly) the same coefficients; a penalty on the summed one (the old
    logistic ``C = 1 / penalizer``) would shrink them three times less."""
    pytest.importorskip("lifelines")
    from wsimm.fusion import LinearBaseline

    mods, pids, table = _without_slides(cohort)
    pre = Preprocessor.fit(mods, pids, group_pcs=4)
    k = 1 if task == "survival" else 3

    def coef(t: pd.DataFrame) -> np.ndarray:
        lb = LinearBaseline(task, use_omics=True, penalizer=1.0).fit(mods, pre, t, n_classes=k)
        return np.asarray(lb.coef if task == "survival" else lb.model.coef_).ravel()

    once = coef(table)
    thrice = coef(pd.concat([table] * 3, ignore_index=True))
    assert np.abs(once).max() > 0.02  # a penalty that leaves something to compare
    np.testing.assert_allclose(thrice, once, atol=0.1 * np.abs(once).max())


@pytest.mark.parametrize("task", ["survival", "grade"])
def test_wide_part_rewritten_for_the_networks_standardisation(cohort, task):
    """The wide part refitted on more patients (training + validation) standardises over
    them (``restandardised``: the network's genes and categories, new means and sds);
    rewritten over the network's standardisation (fitted on fewer patients) it gives the
    same scores, and no rewrite is offered when the two keep different genes or categories."""
    pytest.importorskip("lifelines")
    from wsimm.fusion import LinearBaseline

    mods, pids, table = _without_slides(cohort)
    pre = Preprocessor.fit(mods, pids[:18], group_pcs=4)
    own = pre.restandardised(mods, pids)
    assert own.genes == pre.genes and own.clin_cat == pre.clin_cat
    assert own.clin_num != pre.clin_num
    assert all(np.abs(own.omics_mean[a] - pre.omics_mean[a]).max() > 1e-3 for a in pre.genes)
    k = 1 if task == "survival" else 3
    lb = LinearBaseline(task, use_omics=True).fit(mods, own, table, n_classes=k)
    w = lb.wide_weights(k).for_preprocessor(own, pre)
    net = _net(mods, pre, "graph", hidden=16, heads=2, n_outputs=k, wide=True,
               wide_genes={a: len(g) for a, g in pre.genes.items()})  # fmt: skip
    net.set_wide(w)
    net.eval()
    b = Batch.from_data_list(build_graphs(mods, pre, pids, slide_index={}))
    with torch.no_grad():
        logits = net(b).logits.double().numpy()
    has = np.isin(pids, mods.omics.patients)
    want = lb.predict(pids)
    got = logits[has, 0] if task == "survival" else torch.softmax(torch.as_tensor(logits), 1)
    np.testing.assert_allclose(got if task == "survival" else got.numpy()[has], want[has],
                               atol=1e-4)  # fmt: skip
    # unrewritten, the weights read the network's inputs as if standardised like their own
    net.set_wide(lb.wide_weights(k))
    with torch.no_grad():
        raw = net(b).logits.double().numpy()
    assert np.abs(raw - logits).max() > 1e-2
    other = Preprocessor.fit(mods, pids)  # keeps genes and categories the network lacks
    assert other.genes != pre.genes or other.clin_cat != pre.clin_cat
    assert lb.wide_weights(k).for_preprocessor(other, pre) is None


@pytest.mark.parametrize("task", ["survival", "grade"])
def test_wide_cross_terms_are_the_linear_model(cohort, task):
    """With ``cross``, the wide part reads each patient's mean tile from the tiles it is given:
    the network starts as exactly the linear model with slide components and slide x omics
    products, and leaving the slides out takes both terms away (their buffers are padded
    when a fold fits fewer components than the spec allows)."""
    pytest.importorskip("lifelines")
    import pandas as pd

    from wsimm.fusion import LinearBaseline, SlideTerms, design_matrix

    co, paths = cohort
    mods, pids, slide_ids, pre, graphs = _all_patients(co, paths)
    table = co.labels.drop_duplicates("patient_id").set_index("patient_id").loc[pids]
    table = table.reset_index().rename(columns={"grade": "y"})
    means = pd.DataFrame(
        {
            p: np.mean([co.bags[s].astype(np.float64).mean(0) for s in ss], 0)
            for p, ss in mods.slides.items()
            if ss
        }
    ).T
    k = 1 if task == "survival" else 3
    st = SlideTerms(means, n_components=3, n_cross=2)
    lb = LinearBaseline(task, use_omics=True, n_components=4, slides=st).fit(
        mods, pre, table, n_classes=k
    )
    assert {"S1", "S3", "S1xPC1", "S3xPC2"} <= set(lb.columns)
    net = _net(mods, pre, "graph", hidden=16, heads=2, n_outputs=k, wide=True, cross=True,
               cross_slide_pcs=5, cross_omics_pcs=3,
               wide_genes={a: len(g) for a, g in pre.genes.items()})  # fmt: skip
    # the network sees normalised tiles: the weights rewritten for them give the same model
    mu, sd = np.linspace(-1, 1, 16), np.linspace(0.5, 2, 16)
    net.set_wide(lb.wide_weights(k).for_normalised_tiles(mu, sd))
    net.eval()
    b = Batch.from_data_list(graphs)
    no_slide = {"slide": torch.zeros(b["slide"].num_nodes, dtype=torch.bool)}
    tx, tb = _tiles(co, b, slide_ids)
    with torch.no_grad():
        out = net(b, ((tx - torch.as_tensor(mu).float()) / torch.as_tensor(sd).float(), tb))
        without = net(b, None, keep=no_slide).logits.double().numpy()
    logits = out.logits.double().numpy()
    has = np.isin(pids, mods.omics.patients)
    with_slide = np.isin(pids, means.index)
    assert (has & with_slide).sum() >= 10 and (has & ~with_slide).sum() >= 1
    X = design_matrix(mods, pre, pids, pca=lb.pca, slides=st)[lb.columns].to_numpy()
    slide_cols = np.array([bool(re.match(r"S\d", c)) for c in lb.columns])
    assert np.abs(X[~with_slide][:, slide_cols]).max() == 0  # no slide: no slide terms
    if task == "survival":
        np.testing.assert_allclose(logits[has, 0], lb.predict(pids)[has], atol=1e-3)
        no_s = X[:, ~slide_cols] @ lb.coef[~slide_cols]
        np.testing.assert_allclose(without[has, 0], no_s[has], atol=1e-3)
        cross = out.wide["cross"][:, 0].double().numpy()
        xc = np.array(["xPC" in c for c in lb.columns])
        np.testing.assert_allclose(cross[has], (X[:, xc] @ lb.coef[xc])[has], atol=1e-3)
        assert np.abs(cross[has & with_slide]).max() > 1e-3  # the crosses do take part
    else:
        p = torch.softmax(torch.as_tensor(logits), 1).numpy()
        np.testing.assert_allclose(p[has], lb.predict(pids)[has], atol=1e-3)
        assert np.abs(without - logits)[has & with_slide].max() > 1e-3


def test_wide_prototype_shares_are_the_linear_model(cohort):
    """With ``cross_prototypes``, the wide part counts each tile for its nearest prototype:
    the network's shares, slide terms and crosses are the linear model's, patients with
    several slides average their slides' shares, and the tiles given in another order do not
    change the risks."""
    pytest.importorskip("lifelines")
    import pandas as pd
    from sklearn.cluster import KMeans

    from wsimm.fusion import LinearBaseline, SlideTerms

    co, paths = cohort
    mods, pids, slide_ids, pre, graphs = _all_patients(co, paths)
    table = co.labels.drop_duplicates("patient_id").set_index("patient_id").loc[pids]
    table = table.reset_index()
    P = 5
    tiles = np.concatenate([co.bags[s].astype(np.float32) for s in slide_ids])
    protos = KMeans(P, n_init=2, random_state=0).fit(tiles).cluster_centers_.astype(np.float32)

    def share(x):
        d = ((x[:, None, :].astype(np.float64) - protos[None]) ** 2).sum(-1)
        return np.bincount(d.argmin(1), minlength=P) / len(x)

    shares = pd.DataFrame(
        {p: np.mean([share(co.bags[s]) for s in ss], 0) for p, ss in mods.slides.items() if ss}
    ).T
    st = SlideTerms(shares, n_cross=2, prototypes=protos)
    lb = LinearBaseline("survival", use_omics=True, n_components=4, slides=st).fit(
        mods, pre, table, n_classes=1
    )
    assert {f"S{P}", f"S{P}xPC2"} <= set(lb.columns)  # every prototype kept, no PCA
    net = _net(mods, pre, "graph", hidden=16, heads=2, n_outputs=1, wide=True, cross=True,
               cross_prototypes=P, cross_omics_pcs=3,
               wide_genes={a: len(g) for a, g in pre.genes.items()})  # fmt: skip
    w = lb.wide_weights(1)
    assert w.for_normalised_tiles(np.ones(16), np.full(16, 2.0)) is w  # shares: nothing to fold
    net.set_wide(w)
    net.eval()
    b = Batch.from_data_list(graphs)
    tx, tb = _tiles(co, b, slide_ids)
    with torch.no_grad():
        sm, has_s = net.patient_tile_mean(b, (tx, tb), {})
        out = net(b, (tx, tb))
        perm = torch.randperm(len(tx), generator=torch.Generator().manual_seed(0))
        shuffled = net(b, (tx[perm], tb[perm])).logits
    with_slide = np.isin(pids, shares.index)
    np.testing.assert_allclose(
        sm.numpy()[with_slide], shares.loc[np.asarray(pids)[with_slide]].to_numpy(), atol=1e-6
    )
    assert not has_s.numpy()[~with_slide].any()
    has = np.isin(pids, mods.omics.patients)
    np.testing.assert_allclose(out.logits[:, 0].numpy()[has], lb.predict(pids)[has], atol=1e-3)
    np.testing.assert_allclose(shuffled.numpy(), out.logits.numpy(), atol=1e-5)
    assert np.abs(out.wide["cross"][:, 0].numpy()[has & with_slide]).max() > 1e-3
    # a fitted wide part without prototypes is refused, not silently read as mean tiles
    with pytest.raises(ValueError, match="without 5 tile prototypes"):
        net.set_wide(replace(w, prototypes=None))


def test_contrastive_alignment_pairs_a_patients_own_modalities(cohort):
    """The InfoNCE loss is the cross-entropy of matching each patient's slide embedding to its
    own omics embedding among the batch's patients with both; fewer than two: no loss; a few
    steps on it alone align the pairs (the loss falls)."""
    co, paths = cohort
    mods, pids, slide_ids, pre, graphs = _all_patients(co, paths)
    torch.manual_seed(0)
    net = _net(mods, pre, "graph", hidden=16, heads=2, dropout=0.0, contrastive=1.0)
    b = Batch.from_data_list(graphs)
    tiles = _tiles(co, b, slide_ids)
    net.train()  # the slide model's dropout draws: the same seed for the forward and by hand
    torch.manual_seed(1)
    out = net(b, tiles)
    both = [
        j
        for j in range(len(pids))
        if (b["slide"].batch == j).any() and (b["gene_group"].batch == j).any()
    ]
    assert len(both) >= 4 and out.align_loss is not None
    # by hand: mean slide / gene-group node embeddings, projected, cosine / temperature
    torch.manual_seed(1)
    x, *_ = net._encode(b, tiles, {})

    def mean(t, proj):
        return torch.stack([proj(x[t][b[t].batch == j].mean(0)) for j in both])

    zs = torch.nn.functional.normalize(mean("slide", net.align_slide), dim=1)
    zo = torch.nn.functional.normalize(mean("gene_group", net.align_omics), dim=1)
    sim = zs @ zo.T / 0.1
    ce = torch.nn.functional.cross_entropy
    y = torch.arange(len(both))
    torch.testing.assert_close(out.align_loss, (ce(sim, y) + ce(sim.T, y)) / 2)
    # omics kept for one patient only: nothing to contrast
    keep = {"gene_group": b["gene_group"].batch == both[0]}
    assert net(b, tiles, keep=keep).align_loss is None
    net.eval()
    assert net(b, tiles).align_loss is None  # a training loss only
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = float(out.align_loss.detach())
    for _ in range(30):
        loss = net(b, tiles).align_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(net(b, tiles).align_loss.detach()) < 0.5 * first


def test_graph_only_switches_are_refused_elsewhere():
    from wsimm.errors import ConfigError
    from wsimm.train import TrainConfig
    from wsimm.train._fusion import baseline_plan

    with pytest.raises(ConfigError, match="coattention need --fusion graph"):
        TrainConfig(labels="l.csv", omics="o.csv", task="survival", out="r", fusion="late",
                    fusion_kwargs={"coattention": True}).validate()  # fmt: skip
    with pytest.raises(ConfigError, match="coattention needs --fusion graph"):
        FusionSpec("concat", ["slide", "omics"], 1, [3], ["rnaseq"], coattention=True).validate()
    with pytest.raises(ConfigError, match="contrastive"):
        FusionSpec("graph", ["slide", "omics"], 1, [3], ["rnaseq"], contrastive=-1).validate()
    with pytest.raises(ConfigError, match="cross need --fusion graph"):
        TrainConfig(labels="l.csv", omics="o.csv", task="survival", out="r", fusion="concat",
                    fusion_kwargs={"cross": True}).validate()  # fmt: skip
    for mods, wide in ((["slide", "omics"], False), (["omics", "clinical"], True)):
        with pytest.raises(ConfigError, match="cross needs the wide part"):
            FusionSpec("graph", mods, 1, [3], ["rnaseq"], wide=wide, cross=True).validate()
    for kw in ({"cross_prototypes": 8}, {"cross": True, "cross_prototypes": 1}):
        with pytest.raises(ConfigError, match="cross_prototypes must be >= 2 and needs cross"):
            FusionSpec("graph", ["slide", "omics"], 1, [3], ["rnaseq"], wide=True,
                       **kw).validate()  # fmt: skip
    # cross: the run's wide part alone joins the baselines, and the plain graph fusion
    cfg = TrainConfig(labels="l.csv", omics="o.csv", store="s.zarr", task="survival", out="r",
                      fusion="graph", fusion_kwargs={"cross": True})  # fmt: skip
    names = [n for n, _ in baseline_plan(cfg, ["slide", "omics", "clinical"])]
    assert {"clinical_omics_slide_cross_cox", "graph_fusion"} <= set(names)
    # with the switches on, the plain graph fusion joins the baselines
    cfg = TrainConfig(labels="l.csv", omics="o.csv", store="s.zarr", task="survival", out="r",
                      fusion="graph", fusion_kwargs={"coattention": True})  # fmt: skip
    names = [n for n, _ in baseline_plan(cfg, ["slide", "omics"])]
    assert "graph_fusion" in names and "late_fusion" in names
    plain = TrainConfig(labels="l.csv", omics="o.csv", store="s.zarr", task="survival",
                        out="r", fusion="graph")  # fmt: skip
    assert "graph_fusion" not in [n for n, _ in baseline_plan(plain, ["slide", "omics"])]


def _refused_before_writing(cohort, tmp_path, fusion_kwargs: dict, match: str) -> None:
    """A graph fusion run on the cohort's omics and clinical data (no slides) with these
    switches fails with one ConfigError matching ``match``, and writes nothing."""
    from wsimm.errors import ConfigError
    from wsimm.train import train

    _, paths = cohort
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        train(labels=str(paths["labels"]), omics=str(paths["omics"]),
              clinical=str(paths["clinical"]), gene_groups=str(paths["gene_groups"]),
              task="survival", fusion="graph", out=str(out), quiet=True,
              fusion_kwargs=fusion_kwargs)  # fmt: skip
    assert not out.exists()


def test_switches_without_slides_are_refused_before_anything_is_written(cohort, tmp_path):
    _refused_before_writing(
        cohort,
        tmp_path,
        {"coattention": True},
        r"coattention join slides and omics.*omics, clinical",
    )


@pytest.mark.parametrize("forms", [[1], [0, 1], "16", True, [], ["none"], [None, "nothing"]])
def test_bad_cross_forms_are_refused_before_anything_is_written(cohort, tmp_path, forms):
    from wsimm.train._fusion import cross_forms

    assert cross_forms([16, 0, 16]) == [16, 0] and cross_forms(8) == [8]
    assert cross_forms(["None", 0, None, 8]) == ["none", 0, 8]  # YAML's null is none too
    _refused_before_writing(
        cohort, tmp_path, {"cross": True, "cross_prototypes": forms},
        r"cross_prototypes must be 0 \(the mean tile\)",
    )  # fmt: skip


@pytest.mark.parametrize("forms", [[0, 16], ["none", 0]])
def test_a_list_of_cross_forms_without_cross_is_refused(cohort, tmp_path, forms):
    _refused_before_writing(
        cohort, tmp_path, {"cross_prototypes": forms}, r"cross_prototypes \[.*\] needs cross"
    )


@pytest.mark.parametrize(
    "fusion_kwargs, match",
    [
        ("{bogus: 1}", r"unknown keys bogus; valid keys: .*hidden"),
        ("{hidden: abc}", r"hidden must be a whole number >= 1, got 'abc'"),
        ("{deep: 7}", r"deep must be true or false, got 7"),
        ("{dropout: 1.5}", r"dropout must be a number in \[0, 1\), got 1.5"),
        ("{hidden: 30, heads: 4}", r"hidden \(30\) must be a multiple of heads \(4\)"),
        ("{temperature: 0}", r"temperature must be a number > 0"),
        ("{uncertainty: 1}", r"at least 2 Monte Carlo passes"),
        ("{cross_prototypes: [0, 16]}", r"cross_prototypes \[0, 16\] needs cross"),
    ],
)
def test_bad_fusion_kwargs_in_a_config_file_name_the_file(cohort, tmp_path, fusion_kwargs, match):
    """A wrong key or value in ``--config``'s fusion_kwargs is one ConfigError naming the
    file and the key, before anything is written (a typo used to fail every fold with a
    TypeError, or pass: ``deep: 7``)."""
    from wsimm.errors import ConfigError
    from wsimm.train import TrainConfig, train

    _, paths = cohort
    config = tmp_path / "fusion.yaml"
    config.write_text(f"fusion_kwargs: {fusion_kwargs}\nepochs: 1\n")
    out = tmp_path / "run"
    cfg = TrainConfig.load(
        config, labels=str(paths["labels"]), omics=str(paths["omics"]),
        clinical=str(paths["clinical"]), gene_groups=str(paths["gene_groups"]),
        task="survival", fusion="graph", out=str(out),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=f"^{config}: fusion_kwargs.*{match}"):
        train(cfg, quiet=True)
    assert not out.exists()


def test_fusion_kwargs_need_a_fusion_and_tuning_candidates_are_checked_first(cohort, tmp_path):
    from wsimm.errors import ConfigError
    from wsimm.train import TrainConfig, train

    with pytest.raises(ConfigError, match="fusion_kwargs is used by fusion models only"):
        TrainConfig(labels="l.csv", store="s.zarr", fusion_kwargs={"hidden": 8}).validate()
    numpy_values = {"hidden": np.int64(32), "dropout": np.float32(0.3), "deep": np.bool_(True)}
    TrainConfig(
        labels="l.csv", omics="o.csv", fusion="graph", fusion_kwargs=numpy_values
    ).validate()
    _, paths = cohort
    out = tmp_path / "run"
    match = r"tune.grid candidate \{fusion_kwargs.heads: 3\}: .*hidden \(8\) must be a multiple"
    with pytest.raises(ConfigError, match=match):
        train(labels=str(paths["labels"]), omics=str(paths["omics"]), task="survival",
              fusion="graph", out=str(out), quiet=True, fusion_kwargs={"hidden": 8},
              tune={"grid": {"fusion_kwargs.heads": [4, 3]}})  # fmt: skip
    assert not out.exists()


def test_bag_norm_in_model_kwargs_reaches_the_fusion_slide_branch(cohort):
    """``model_kwargs: {bag_norm: true}`` standardises the pooled slide embeddings across a
    batch's slides before the slide node (it was accepted and silently ignored); by default
    they enter as pooled."""
    co, paths = cohort
    mods, _, slide_ids, pre, graphs = _all_patients(co, paths)
    b = Batch.from_data_list(graphs)
    tiles = _tiles(co, b, slide_ids)
    seen = {}
    for kwargs in ({"bag_norm": True}, None):
        torch.manual_seed(0)
        net = _net(mods, pre, "graph", hidden=16, heads=2, slide_model_kwargs=kwargs)
        net.slide_proj.register_forward_hook(lambda m, i, o, k=bool(kwargs): seen.update({k: i[0]}))
        net.train()
        net(b, tiles)
    on, off = seen[True].detach(), seen[False].detach()
    assert len(on) == len(slide_ids) > 2
    np.testing.assert_allclose(on.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(on.var(0, unbiased=False).numpy(), 1.0, atol=1e-2)
    assert off.std(0).mean() < 0.5  # pooled embeddings barely differ from slide to slide
