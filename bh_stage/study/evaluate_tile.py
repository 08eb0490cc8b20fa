"""Tile-level evaluation (``bh-stage evaluate-tile``): what each column is worth on a tile.

Inputs: the tile set of ``EvaluateTileConfig.tiles`` (simulated and SExtracted when missing)
and the stage's config. Steps: ``bh-stage run`` on each test tile; the truth classes of each
detection (``tiletruth``); the free catalogue cues and two catalogue-only classifiers trained
on the training tiles: the baseline (``tune_baseline``: every free SExtractor column and cue of
``cues.baseline_features``, gradient boosting and logistic regression over a grid, the best
chosen by validation AUC) and the earlier untuned one on ``cues.FEATURE_NAMES``
(``catalogue_classifiers``); then, for every score and truth comparison, ROC AUC, TPR at
fixed FPRs and the fraction flagged, each with 68 % and 95 % intervals from a bootstrap over
galaxies (``metrics.group_bootstrap``), the paired AUC difference of BLEND_PROB and each
catalogue classifier, and the calibration of BLEND_PROB on the test tiles
(``calibration_summary``). Outputs in ``output_dir``: ``results.md``, ``metrics.csv``,
``detections.npz``, ``info.json`` (the baseline's grid, every validation AUC and its choice;
the calibration; the paired differences) and figures (ROC curves, TPR vs separation and flux
ratio, a gallery of caught, missed and false unrecognised blends).
"""

import dataclasses
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from .. import cues
from ..extras import require
from . import cutouts, metrics, tileset

__all__ = ["COMPARISONS", "SCORES", "comparison_labels", "galaxy_groups", "unit_counts",
           "score_table",
           "catalogue_classifiers", "BOOSTING_GRID", "LOGISTIC_C_GRID", "baseline_configs",
           "TunedBaseline", "tune_baseline", "fit_baseline", "baseline_columns",
           "baseline_matrix", "reliability_bins", "calibration_summary",
           "MULTIPLE_CUTOUT", "MULTIPLES_APART", "multiple_cutouts_of",
           "evaluate_tile", "run_evaluate_tile"]

log = logging.getLogger(__name__)

UNTUNED = "catalogue classifier (9 features, untuned)"
"""Score name of ``catalogue_classifiers``' classifier, kept beside the tuned baseline."""

COMPARISONS = {
    "unrecognised vs all others": ("UNRECOGNISED", None),
    "unrecognised vs isolated": ("UNRECOGNISED", "ISOLATED"),
    "close companion vs isolated": ("CLOSE_COMPANION", "ISOLATED"),
    "paper blend vs not": ("PAPER_BLEND", None),
}
"""Comparison -> (positive class, negative class); None: every other detection."""

SCORES = {
    "BLEND_PROB": "stage: P(unrecognised blend), tile head",
    "BLEND_FLAG": "stage: recommended cut (binary)",
    "BH_PAPER_PROB": "stage: P(paper blend), paper head",
    "BH_PAPER_FLAG": "stage: paper hybrid, SEP or paper head (binary)",
    "SEP_NSRC": "stage: SEP sources in the stamp",
    "catalogue classifier": "catalogue-only baseline: every free catalogue column and cue, "
                            "tuned (training tiles, chosen on the validation tiles)",
    UNTUNED: "the earlier catalogue-only classifier: 9 features, fixed settings",
    "FLAGS&2": "SExtractor: deblended (binary)",
    "FLAGS&1": "SExtractor: bright neighbours (binary)",
    "-nearest detection": "minus the distance to the nearest other detection",
    "detections in stamp": "other detections inside the 51x51 stamp",
    "ELONGATION": "SExtractor A_IMAGE / B_IMAGE",
    "FLUX_RADIUS": "SExtractor half-light radius",
}
"""Scores compared, higher meaning more likely blended."""

BINARY = ("BLEND_FLAG", "BH_PAPER_FLAG", "FLAGS&2", "FLAGS&1")

MULTIPLE_CUTOUT = "MULTIPLE_CUTOUT"
"""Table column: the detection's main object is a real galaxy whose HST cut-out holds a
second source (``cutouts``): two light sources the truth calls one galaxy."""
MULTIPLES_APART = "multiple cut-outs apart"
"""Subset of the report without those detections (they are counted, not labelled)."""


def comparison_labels(classes, comparison):
    """Return (rows, labels) of one comparison: the detections it uses and 1 for positives."""
    pos_name, neg_name = COMPARISONS[comparison]
    pos = classes[pos_name] == 1
    neg = ~pos if neg_name is None else (classes[neg_name] == 1) & ~pos
    rows = np.flatnonzero(pos | neg)
    return rows, pos[rows].astype(np.int8)


def galaxy_groups(classes):
    """Bootstrap unit per detection: its main object's global unit (``GROUP``: one per true
    galaxy across all tiles, one per star); each spurious detection alone."""
    from .tiletruth import SPURIOUS_UNIT

    groups = classes["GROUP"].astype(np.int64).copy()
    spurious = groups == SPURIOUS_UNIT
    groups[spurious] = groups.max(initial=0) + 1 + np.arange(spurious.sum())
    return groups


def unit_counts(classes):
    """Distinct units of a detection table, reported apart: ``galaxies`` (true galaxies, each
    counted once whatever the tiles and detections it appears in), ``stars``, and
    ``spurious`` detections (no true object)."""
    from .tiletruth import SPURIOUS_UNIT

    groups = np.asarray(classes["GROUP"], dtype=np.int64)
    return {"galaxies": int(np.unique(groups[groups > 0]).size),
            "stars": int(np.unique(groups[groups < 0]).size),
            "spurious": int((groups == SPURIOUS_UNIT).sum())}


def score_table(stage_columns, catalogue_features, catalogue_score, untuned_score=None):
    """Return ``{score name: values}`` of every score in ``SCORES`` for one tile:
    ``catalogue_score`` is the tuned baseline's, ``untuned_score`` (default NaN) the 9-feature
    classifier's."""
    f = dict(zip(cues.FEATURE_NAMES, catalogue_features.T))
    if untuned_score is None:
        untuned_score = np.full(len(catalogue_features), np.nan)
    return {
        "BLEND_PROB": stage_columns["BLEND_PROB"],
        "BLEND_FLAG": stage_columns["BLEND_FLAG"],
        "BH_PAPER_PROB": stage_columns["BH_PAPER_PROB"],
        "BH_PAPER_FLAG": stage_columns["BH_PAPER_FLAG"],
        "SEP_NSRC": stage_columns["SEP_NSRC"],
        "catalogue classifier": catalogue_score,
        UNTUNED: untuned_score,
        "FLAGS&2": f["FLAGS_BLENDED"],
        "FLAGS&1": f["FLAGS_NEIGHBOURS"],
        "-nearest detection": -stage_columns["BH_NEAREST_PIX"],
        "detections in stamp": stage_columns["BH_NDET_STAMP"],
        "ELONGATION": f["ELONGATION"],
        "FLUX_RADIUS": f["FLUX_RADIUS"],
    }


def _score_metrics(score, labels, fprs, binary):
    """AUC, TPR at each FPR, and for binary scores the TPR, FPR and fraction flagged."""
    s = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    out = [metrics.roc_auc(s, labels)]
    out += [metrics.tpr_at_fpr(s, labels, f) for f in fprs]
    if binary:
        flag = s > 0
        pos = labels == 1
        out += [float(flag[pos].mean()) if pos.any() else np.nan,
                float(flag[~pos].mean()) if (~pos).any() else np.nan, float(flag.mean())]
    else:
        out += [np.nan, np.nan, np.nan]
    return np.array(out)


METRIC_NAMES = ("roc_auc", "tpr_at_fpr", "flag_tpr", "flag_fpr", "flag_fraction")


def catalogue_classifiers(train, valid, seed):
    """Fit logistic regression and gradient boosting on training tiles; keep the one with the
    higher validation AUC for unrecognised blends. Returns (name, predict, valid AUCs)."""
    HistGradientBoostingClassifier = require(
        "sklearn.ensemble", "study").HistGradientBoostingClassifier
    LogisticRegression = require("sklearn.linear_model", "study").LogisticRegression
    make_pipeline = require("sklearn.pipeline", "study").make_pipeline
    StandardScaler = require("sklearn.preprocessing", "study").StandardScaler

    (x_tr, y_tr), (x_va, y_va) = train, valid
    models = {
        "logistic regression": make_pipeline(StandardScaler(),
                                             LogisticRegression(max_iter=2000)),
        "gradient boosting": HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05,
                                                            random_state=seed),
    }
    aucs = {}
    for name, model in models.items():
        model.fit(x_tr, y_tr)
        aucs[name] = metrics.roc_auc(model.predict_proba(x_va)[:, 1], y_va)
    best = max(aucs, key=aucs.get)
    return best, (lambda x: models[best].predict_proba(x)[:, 1]), aucs


BOOSTING_GRID = tuple(
    {"learning_rate": rate, "max_iter": n_iter, "max_leaf_nodes": leaves,
     "min_samples_leaf": min_leaf, "l2_regularization": l2}
    for rate in (0.05, 0.1) for leaves in (15, 63) for min_leaf in (20, 100)
    for l2 in (0.0, 1.0) for n_iter in (100, 300))
"""Settings of ``HistGradientBoostingClassifier`` tried by ``tune_baseline`` (32, from 16
fits): learning rate, leaves per tree, fewest detections per leaf, L2 penalty and iterations
(early stopping off), two values each."""

LOGISTIC_C_GRID = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
"""Inverse L2 penalties ``C`` of the logistic regression (on standardised features) tried by
``tune_baseline``."""

LOGISTIC_MAX_ITER = 5000
"""Iterations allowed to the logistic regression's solver."""


def baseline_configs(boosting_grid=BOOSTING_GRID, c_grid=LOGISTIC_C_GRID):
    """The configurations ``tune_baseline`` tries, in order: ``(model, params)`` with model
    'gradient boosting' (``params`` of ``HistGradientBoostingClassifier``) or 'logistic
    regression' (``{"C": c}``)."""
    return ([("gradient boosting", dict(p)) for p in boosting_grid]
            + [("logistic regression", {"C": float(c)}) for c in c_grid])


def _baseline_estimator(model, params, seed):
    """An unfitted estimator of one ``baseline_configs`` entry."""
    if model == "gradient boosting":
        boosting = require("sklearn.ensemble", "study").HistGradientBoostingClassifier
        return boosting(early_stopping=False, random_state=seed, **params)
    LogisticRegression = require("sklearn.linear_model", "study").LogisticRegression
    make_pipeline = require("sklearn.pipeline", "study").make_pipeline
    StandardScaler = require("sklearn.preprocessing", "study").StandardScaler
    return make_pipeline(StandardScaler(),
                         LogisticRegression(max_iter=LOGISTIC_MAX_ITER, **params))


@dataclasses.dataclass
class TunedBaseline:
    """The catalogue-only baseline chosen by ``tune_baseline``.

    Attributes
    ----------
    model : str
        'gradient boosting' or 'logistic regression'.
    params : dict
        Its settings (one ``baseline_configs`` entry).
    valid_auc : float
        Its validation ROC AUC.
    trials : list of dict
        Every configuration tried, in order: ``model``, ``params``, ``valid_auc`` and
        ``converged`` (False when the logistic regression's solver stopped at
        ``LOGISTIC_MAX_ITER``; always True for gradient boosting).
    estimator : object
        The fitted scikit-learn estimator (fitted on the training rows only).
    """

    model: str
    params: dict
    valid_auc: float
    trials: list
    estimator: object

    def predict(self, x):
        """P(positive) of each row of a feature matrix laid out as in training."""
        return self.estimator.predict_proba(x)[:, 1]


def tune_baseline(train, valid, seed, boosting_grid=BOOSTING_GRID, c_grid=LOGISTIC_C_GRID):
    """Fit every ``baseline_configs`` entry on the training rows and keep the one with the
    highest ROC AUC on the validation rows (the first of equals).

    Gradient boosting settings that differ only in ``max_iter`` share one fit, to the
    largest: without early stopping its first k trees are the k-iteration model, scored on
    the validation rows with ``staged_predict_proba``. The chosen model is fitted again to
    its own ``max_iter`` when that is shorter.

    Parameters
    ----------
    train, valid : (ndarray (n, k), ndarray (n,) of {0, 1})
        Features and labels of the training and the validation rows (the same k columns).
    seed : int
        ``random_state`` of gradient boosting.
    boosting_grid, c_grid
        Default ``BOOSTING_GRID`` and ``LOGISTIC_C_GRID``.

    Returns
    -------
    TunedBaseline

    Raises
    ------
    ConfigError
        The validation rows hold one class only, so no AUC can choose.
    """
    from ..errors import ConfigError

    (x_tr, y_tr), (x_va, y_va) = train, valid
    configs = baseline_configs(boosting_grid, c_grid)
    scores, fitted = {}, {}
    # gradient boosting without early stopping: the first k trees of a longer fit are the
    # k-iteration model, so each setting is fitted once, to its longest max_iter
    paths = {}
    for _, params in configs[:len(boosting_grid)]:
        key = _path_key(params)
        paths[key] = max(paths.get(key, 0), params["max_iter"])
    for key, n_iter in paths.items():
        estimator = _baseline_estimator("gradient boosting", {**dict(key), "max_iter": n_iter},
                                        seed).fit(x_tr, y_tr)
        fitted[key] = estimator
        for k, p in enumerate(estimator.staged_predict_proba(x_va), start=1):
            scores[key + (("max_iter", k),)] = p[:, 1]
    ConvergenceWarning = require("sklearn.exceptions", "study").ConvergenceWarning
    trials = []
    for model, params in configs:
        converged = True
        if model == "gradient boosting":
            score = scores[_path_key(params) + (("max_iter", params["max_iter"]),)]
        else:
            estimator = _baseline_estimator(model, params, seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # recorded instead
                estimator.fit(x_tr, y_tr)
            converged = int(np.max(estimator[-1].n_iter_)) < LOGISTIC_MAX_ITER
            fitted[params["C"]] = estimator
            score = estimator.predict_proba(x_va)[:, 1]
        auc = metrics.roc_auc(score, y_va)
        trials.append({"model": model, "params": params, "valid_auc": auc,
                       "converged": bool(converged)})
        log.debug("baseline %s %s: validation AUC %.4f", model, params, auc)
    aucs = np.array([t["valid_auc"] for t in trials])
    if not np.isfinite(aucs).any():
        raise ConfigError("the validation tiles hold only one class of detection, so no "
                          "catalogue baseline can be chosen; add valid_seeds or raise "
                          "tiles.close_pair_fraction")
    chosen = trials[int(np.nanargmax(aucs))]
    model, params = chosen["model"], chosen["params"]
    if model == "logistic regression":
        estimator = fitted[params["C"]]
    elif fitted[_path_key(params)].max_iter == params["max_iter"]:
        estimator = fitted[_path_key(params)]
    else:  # the same trees, fitted again to the chosen length
        estimator = _baseline_estimator(model, params, seed).fit(x_tr, y_tr)
    log.info("catalogue baseline: %s %s, validation AUC %.4f (best of %d)", model, params,
             chosen["valid_auc"], len(trials))
    return TunedBaseline(model, params, chosen["valid_auc"], trials, estimator)


def _path_key(params):
    """Gradient boosting settings but ``max_iter``, as a hashable key."""
    return tuple(sorted((k, v) for k, v in params.items() if k != "max_iter"))


def reliability_bins(prob, labels, n_bins=10):
    """Reliability curve of a probability in ``n_bins`` equal bins of [0, 1].

    Bin ``b`` holds ``b / n_bins <= p < (b + 1) / n_bins``; the last one also holds
    ``p = 1``. Non-finite probabilities are left out.

    Returns
    -------
    dict of ndarray, each shape (n_bins,) but ``edges`` (n_bins + 1,)
        ``edges``, ``n`` (rows in the bin), ``p_mean`` (mean probability) and ``freq``
        (fraction of label 1); NaN in empty bins.
    """
    prob = np.asarray(prob, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    ok = np.isfinite(prob)
    prob, labels = prob[ok], labels[ok]
    which = np.clip(np.floor(prob * n_bins).astype(np.int64), 0, n_bins - 1)
    n = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_mean = np.bincount(which, weights=prob, minlength=n_bins) / n
        freq = np.bincount(which, weights=labels, minlength=n_bins) / n
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "n": n, "p_mean": p_mean,
            "freq": freq}


def _calibration_point(prob, labels, flag, n_bins):
    """The numbers of ``calibration_summary`` without intervals, as one vector: mean
    probability, fraction of positives, relative difference, fraction flagged, positives
    flagged, flagged positive; then each bin's observed fraction."""
    ok = np.isfinite(prob)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_mean = prob[ok].mean() if ok.any() else np.nan
        frac = labels[ok].mean() if ok.any() else np.nan
        pos = labels == 1
        head = [p_mean, frac, p_mean / frac - 1.0 if frac > 0 else np.nan,
                flag.mean() if flag.size else np.nan,
                flag[pos].mean() if pos.any() else np.nan,
                labels[flag].mean() if flag.any() else np.nan]
    return np.r_[head, reliability_bins(prob, labels, n_bins)["freq"]]


CALIBRATION_KEYS = ("mean_prob", "positive_fraction", "relative_difference",
                    "flagged_fraction", "positives_flagged", "flagged_positive")
"""Scalar keys of ``calibration_summary``."""


def calibration_summary(prob, labels, flag, groups, n_bins=10, n_boot=500, seed=0):
    """Calibration of a probability where it was not fitted, and what its flag keeps.

    Parameters
    ----------
    prob : ndarray of float, shape (n,)
        The probability (``BLEND_PROB``); NaN rows (not scored) are left out of the
        probability numbers.
    labels : ndarray of {0, 1}, shape (n,)
        Truth (unrecognised blend).
    flag : ndarray, shape (n,)
        The cut (``BLEND_FLAG``), true where > 0; over every row.
    groups : ndarray of int, shape (n,)
        Bootstrap unit of each row (``galaxy_groups``).
    n_bins, n_boot, seed
        Reliability bins, bootstrap resamples and seed.

    Returns
    -------
    dict
        ``n`` and ``n_scored`` (rows; rows with a finite probability); for each of
        ``CALIBRATION_KEYS`` its value and ``<key>_95``, the 95 % interval: ``mean_prob``
        (mean probability), ``positive_fraction`` (fraction of label 1, both over the scored
        rows), ``relative_difference`` (``mean_prob / positive_fraction - 1``; NaN without
        positives), ``flagged_fraction`` (fraction of rows flagged), ``positives_flagged``
        (fraction of the positives flagged) and ``flagged_positive`` (fraction of the flagged
        rows that are positive); and ``reliability``, one dict per bin of
        ``reliability_bins`` (``lo``, ``hi``, ``n``, ``p_mean``, ``freq``, ``freq_95``).
    """
    prob = np.asarray(prob, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    flag = np.asarray(flag, dtype=np.float64) > 0

    def stat(idx):
        return _calibration_point(prob[idx], labels[idx], flag[idx], n_bins)

    point = stat(np.arange(prob.size))
    boot = metrics.group_bootstrap(groups, stat, n_boot, seed)
    out = {"n": int(prob.size), "n_scored": int(np.isfinite(prob).sum())}
    for k, key in enumerate(CALIBRATION_KEYS):
        out[key] = float(point[k])
        out[key + "_95"] = metrics.interval(boot[:, k], 0.95)
    bins = reliability_bins(prob, labels, n_bins)
    nk = len(CALIBRATION_KEYS)
    out["reliability"] = [
        {"lo": float(bins["edges"][b]), "hi": float(bins["edges"][b + 1]),
         "n": int(bins["n"][b]), "p_mean": float(bins["p_mean"][b]),
         "freq": float(bins["freq"][b]), "freq_95": metrics.interval(boot[:, nk + b], 0.95)}
        for b in range(n_bins)]
    return out


def evaluate_tile(cfg, progress=None):
    """Run the tile-level evaluation; return the metric rows and the per-detection table."""
    import fitsio

    from ..config import RunConfig, load_config

    t0 = time.perf_counter()
    folders = {role: tileset.prepare_role(cfg.tiles, role, progress)
               for role in tileset.ROLES}
    # before any scoring (a missing file warns), for the real galaxies the test tiles draw
    multiple = multiple_cutouts_of(cfg.tiles, folders["test"])
    # the baseline reads the BASELINE_COLUMNS that every tile's catalogue has (the test
    # catalogues' column names only), so its features are the same on every tile
    # the baseline's columns are chosen from the training and validation catalogues only
    base_columns = baseline_columns([f for role in ("train", "valid") for f in folders[role]])
    role_data, base_data = {}, {}
    for role in ("train", "valid"):
        tables = [tileset.detection_table(f) for f in folders[role]]
        labels = np.concatenate([t[1]["UNRECOGNISED"] for t in tables])
        role_data[role] = (np.concatenate([t[2] for t in tables]), labels)
        mats = [baseline_matrix(f, base_columns, *t[0]) for f, t in zip(folders[role], tables)]
        base_names = mats[0][1]
        base_data[role] = (np.concatenate([m for m, _ in mats]), labels)
    cat_name, cat_predict, cat_valid_auc = catalogue_classifiers(
        role_data["train"], role_data["valid"], cfg.seed)
    t_tune = time.perf_counter()
    baseline = tune_baseline(base_data["train"], base_data["valid"], cfg.seed)
    t_tune = time.perf_counter() - t_tune
    run_cfg = load_config(cfg.run_config, RunConfig)
    tables = []
    for folder in folders["test"]:
        # the report compares BH_PAPER_PROB too: the paper head runs even if run_config
        # leaves it out
        rc = dataclasses.replace(run_cfg, overwrite=True,
                                 head="default" if run_cfg.head == "none" else run_cfg.head)
        out = tileset.run_stage_on_tile(folder, rc, "tile_bh.cat", progress)
        (x, y), classes, feats = tileset.detection_table(folder)
        stage_columns = fitsio.read(str(out), ext="LDAC_OBJECTS")
        _require_columns(folder, base_columns)
        test_base, _ = baseline_matrix(folder, base_columns, x, y)
        scores = score_table(stage_columns, feats, baseline.predict(test_base),
                             cat_predict(feats))
        table = np.zeros(len(classes), dtype=[("TILE", "S16")] + classes.dtype.descr
                         + [(k, "f8") for k in SCORES] + [(MULTIPLE_CUTOUT, "i1")])
        table["TILE"] = folder.name
        for name in classes.dtype.names:
            table[name] = classes[name]
        for name, values in scores.items():
            table[name] = values
        tables.append(table)
    table = np.concatenate(tables)
    table[MULTIPLE_CUTOUT] = cutouts.main_is_multiple(table, multiple)
    apart = table[MULTIPLE_CUTOUT] == 1
    rows = _metric_rows(table, cfg)
    info = {"catalogue_classifier": cat_name, "catalogue_valid_auc": cat_valid_auc,
            "n_test_detections": len(table), "seconds": time.perf_counter() - t0,
            "ties_at_max": _ties_at_max(table["BLEND_PROB"]),
            "prevalence": _prevalence(table, cfg),
            "baseline": {
                "model": baseline.model, "params": baseline.params,
                "valid_auc": baseline.valid_auc, "features": list(base_names),
                "features_left_out": [n for n in cues.BASELINE_FEATURE_NAMES
                                      if n not in base_names],
                "grid": {"gradient boosting": [dict(p) for p in BOOSTING_GRID],
                         "logistic regression": {"C": list(LOGISTIC_C_GRID)}},
                "trials": baseline.trials, "n_train": len(base_data["train"][1]),
                "n_valid": len(base_data["valid"][1]), "seconds": t_tune,
                "chosen_on": "validation tiles, ROC AUC of unrecognised vs all others"},
            "paired_auc": [r for r in rows if r["score"].startswith("BLEND_PROB - ")],
            "calibration": calibration_summary(
                table["BLEND_PROB"], table["UNRECOGNISED"], table["BLEND_FLAG"],
                galaxy_groups(table), 10, cfg.n_bootstrap, cfg.seed),
            "multiple_cutouts": {
                "gal_ids": multiple.tolist(), "detections": int(apart.sum()),
                "galaxies": int(np.unique(table["GROUP"][apart]).size),
                "calibration": calibration_summary(
                    table["BLEND_PROB"][~apart], table["UNRECOGNISED"][~apart],
                    table["BLEND_FLAG"][~apart], galaxy_groups(table[~apart]), 10,
                    cfg.n_bootstrap, cfg.seed)}}
    return rows, table, info


def multiple_cutouts_of(tiles, folders):
    """COSMOS indices of the real galaxies drawn by the prepared tile ``folders`` (their
    truth tables) whose HST cut-out holds a second source (``cutouts.multiple_cutouts``);
    their detections are reported apart. Without the real-galaxy catalogue (tiles made
    elsewhere): none, with a warning."""
    import fitsio

    drawn = set()
    for folder in folders:
        truth = fitsio.read(str(Path(folder) / tileset.TILE_FILES["truth"]), ext="TRUTH",
                            columns=["KIND", "GAL_ID"])
        real = np.char.strip(np.asarray(truth["KIND"]).astype("S")) == b"real"
        drawn.update(int(g) for g in truth["GAL_ID"][real])
    sim = tileset.simulate_config(tiles, "test", tiles.test_seeds[0])
    try:
        return cutouts.multiple_cutouts(cutouts.cutout_components(
            sim.cosmos_dir, sim.real_catalogue, indices=sorted(drawn)))
    except OSError as err:  # tiles made elsewhere, without the COSMOS files here
        log.warning("%s: cannot read the real galaxies' cut-outs (%s); no detection is "
                    "reported apart as a multiple cut-out", Path(sim.cosmos_dir) /
                    sim.real_catalogue, " ".join(str(err).split()))
        return np.zeros(0, dtype=np.int64)


def baseline_columns(folders):
    """The ``cues.BASELINE_COLUMNS`` that the catalogue of every tile folder has (read from
    the table's column names); a warning names the catalogues that lack some."""
    from .. import io

    columns = list(cues.BASELINE_COLUMNS)
    for folder in folders:
        path = Path(folder) / tileset.TILE_FILES["catalogue"]
        present = set(io.read_table_info(path).columns)
        if not present.issuperset(cues.BASELINE_COLUMNS):
            log.warning("%s lacks %s (SExtracted before bh.param gained them); the baseline "
                        "goes without them: delete it and %s to SExtract it again", path,
                        ", ".join(c for c in cues.BASELINE_COLUMNS if c not in present),
                        tileset.TILE_FILES["segmentation"])
        columns = [c for c in columns if c in present]
    return columns


def fit_baseline(folders, columns, model, params, seed):
    """The catalogue-only baseline of one ``baseline_configs`` entry (e.g. the one
    ``tune_baseline`` chose, recorded in ``info.json``), fitted on the detections of prepared
    tile folders (training tiles) labelled unrecognised blend or not; ``predict`` it on
    ``baseline_matrix`` of another tile."""
    tables = [tileset.detection_table(f) for f in folders]
    x = np.concatenate([baseline_matrix(f, columns, *t[0])[0] for f, t in zip(folders, tables)])
    y = np.concatenate([t[1]["UNRECOGNISED"] for t in tables])
    return TunedBaseline(model, dict(params), float("nan"), [],
                         _baseline_estimator(model, dict(params), seed).fit(x, y))


def _require_columns(folder, columns):
    """Refuse a test tile whose catalogue lacks a column the baseline was trained on."""
    from .. import io
    from ..errors import CatalogueColumnError

    path = Path(folder) / tileset.TILE_FILES["catalogue"]
    missing = [c for c in columns if c not in set(io.read_table_info(path).columns)]
    if missing:
        raise CatalogueColumnError(f"{path}: lacks {', '.join(missing)}, which the baseline "
                                   f"was trained on; delete it and "
                                   f"{tileset.TILE_FILES['segmentation']} to SExtract it again")


def baseline_matrix(folder, columns, x_pix, y_pix):
    """``cues.baseline_features`` (matrix, names) of a prepared tile folder from ``columns``
    of its catalogue."""
    from .. import io

    path = Path(folder) / tileset.TILE_FILES["catalogue"]
    return cues.baseline_features(io.read_columns(path, columns), x_pix, y_pix)


def _prevalence(table, cfg):
    """Fraction of test detections in each truth class, with its 95 % galaxy interval."""
    from .tiletruth import TRUTH_CLASSES

    groups = galaxy_groups(table)
    out = {}
    for name, column in TRUTH_CLASSES.items():
        values = table[column].astype(np.float64)
        boot = metrics.group_bootstrap(groups, lambda idx: values[idx].mean(),
                                       cfg.n_bootstrap, cfg.seed)
        out[name] = (float(values.mean()), metrics.interval(boot, 0.95))
    unrec = table["UNRECOGNISED"] == 1
    out["median companion separation, px"] = float(np.nanmedian(
        table["COMP_SEPARATION_PIX"][unrec])) if unrec.any() else float("nan")
    out["median companion flux ratio"] = float(np.nanmedian(
        table["COMP_FLUX_RATIO"][unrec])) if unrec.any() else float("nan")
    return out


def _ties_at_max(prob):
    """Fraction of scored detections sharing the maximum BLEND_PROB."""
    p = prob[np.isfinite(prob)]
    return float(np.mean(p == p.max())) if p.size else float("nan")


def _metric_rows(table, cfg):
    """One row per (subset, comparison, score) with values and galaxy-bootstrap intervals."""
    subsets = {"all": np.ones(len(table), bool),
               f"SNR >= {cfg.snr_min:g}": table["MAIN_SNR"] >= cfg.snr_min}
    if table[MULTIPLE_CUTOUT].any():
        subsets[MULTIPLES_APART] = table[MULTIPLE_CUTOUT] == 0
    out = []
    for subset, keep in subsets.items():
        sub = table[keep]
        groups = galaxy_groups(sub)
        for comparison in COMPARISONS:
            rows, labels = comparison_labels(sub, comparison)
            if labels.sum() == 0 or labels.sum() == len(labels):
                continue
            g = groups[rows]
            units = {f"n_{k}": v for k, v in unit_counts(sub[rows]).items()}
            names = list(SCORES)
            values = np.stack([sub[n][rows] for n in names])

            def stat(idx, values=values, labels=labels):
                return np.concatenate([_score_metrics(v[idx], labels[idx], cfg.fpr_points,
                                                      n in BINARY)
                                       for v, n in zip(values, names)])

            point = stat(np.arange(len(rows)))
            boot = metrics.group_bootstrap(g, stat, cfg.n_bootstrap, cfg.seed)
            width = len(point) // len(names)
            for k, name in enumerate(names):
                sl = slice(k * width, (k + 1) * width)
                row = {"subset": subset, "comparison": comparison, "score": name,
                       "n_pos": int(labels.sum()), "n_neg": int((labels == 0).sum()),
                       "n_groups": int(np.unique(g).size), **units}
                keys = (["roc_auc"] + [f"tpr_at_fpr_{f:g}" for f in cfg.fpr_points]
                        + ["flag_tpr", "flag_fpr", "flag_fraction"])
                for key, v, b in zip(keys, point[sl], boot[:, sl].T):
                    row[key] = float(v)
                    row[key + "_68"] = metrics.interval(b, 0.68)
                    row[key + "_95"] = metrics.interval(b, 0.95)
                out.append(row)
            # paired differences: BLEND_PROB minus each catalogue classifier, AUC
            a = names.index("BLEND_PROB") * width
            for other in ("catalogue classifier", UNTUNED):
                c = names.index(other) * width
                diff = boot[:, a] - boot[:, c]
                out.append({"subset": subset, "comparison": comparison,
                            "score": f"BLEND_PROB - {other}",
                            "n_pos": int(labels.sum()), "n_neg": int((labels == 0).sum()),
                            "n_groups": int(np.unique(g).size), **units,
                            "roc_auc": float(point[a] - point[c]),
                            "roc_auc_68": metrics.interval(diff, 0.68),
                            "roc_auc_95": metrics.interval(diff, 0.95)})
    return out


def _fmt(row, key, digits=3):
    """``value [lo, hi]`` with the 95 % interval."""
    if key not in row:
        return "–"
    return _interval_text(row[key], row[key + "_95"], digits)


def _markdown(cfg, rows, info, command):
    lines = ["# Tile-level evaluation", "",
             f"Made by `{command}` in {info['seconds']:.0f} s: {info['n_test_detections']} "
             f"detections of the test tiles (seeds {cfg.tiles.test_seeds}, test-half real "
             f"galaxies only, {cfg.tiles.size_pix}x{cfg.tiles.size_pix} px, σ = "
             f"{cfg.tiles.noise_sigma_adu} ADU). Intervals: 95 % from {cfg.n_bootstrap} "
             "bootstrap resamples of units: a true galaxy is one unit across all tiles and "
             "detections, each star and each spurious detection its own (counted apart "
             "below). One simulation seed per "
             "tile and one training seed of the heads: the intervals hold galaxy sampling "
             "only.", "",
             *_baseline_text(info["baseline"]),
             f"*{UNTUNED}*, kept to compare with earlier reports: "
             f"{info['catalogue_classifier']} with fixed settings on "
             f"{', '.join(cues.FEATURE_NAMES)}, trained on the training tiles, chosen on the "
             "validation tiles (validation AUC, unrecognised vs all others: "
             + ", ".join(f"{k} {v:.3f}" for k, v in info["catalogue_valid_auc"].items())
             + ").", "", *_paired_text(info["paired_auc"]),
             f"Scored detections tied at the maximum BLEND_PROB: {info['ties_at_max']:.2%}.",
             "", "| truth class | fraction of test detections [95 %] |", "|---|---|"]
    for name, value in info["prevalence"].items():
        if isinstance(value, tuple):
            lines.append(f"| {name} | {value[0]:.3f} [{value[1][0]:.3f}, {value[1][1]:.3f}] |")
        else:
            lines.append(f"| {name} | {value:.2f} |")
    lines += ["", "Classes (`bh_stage.tiletruth`): *unrecognised*, a second object with >= 10 % "
              "of the main object's flux inside the segment and no detection of its own; "
              "*close companion*, another object with >= 10 % of the main object's flux "
              "within 10 px; *paper blend*, such an object inside the 51x51 stamp; "
              "*isolated*, none within 36 px.", "",
              *_multiples_text(info["multiple_cutouts"])]
    fpr_keys = [f"tpr_at_fpr_{f:g}" for f in cfg.fpr_points]
    for subset in dict.fromkeys(r["subset"] for r in rows):
        for comparison in COMPARISONS:
            sel = [r for r in rows if r["subset"] == subset and r["comparison"] == comparison]
            if not sel:
                continue
            lines += [f"## {comparison} ({subset}: {sel[0]['n_pos']} positives, "
                      f"{sel[0]['n_neg']} negatives; {sel[0]['n_galaxies']} distinct galaxies, "
                      f"{sel[0]['n_stars']} stars, {sel[0]['n_spurious']} spurious "
                      "detections)", "",
                      "| score | ROC AUC | " + " | ".join(
                          f"TPR at FPR {f:g}" for f in cfg.fpr_points)
                      + " | flagged: TPR / FPR / fraction |",
                      "|---|---|" + "---|" * len(fpr_keys) + "---|"]
            for r in sel:
                flags = ("–" if not np.isfinite(r.get("flag_tpr", np.nan)) else
                         f"{r['flag_tpr']:.3f} / {r['flag_fpr']:.3f} / "
                         f"{r['flag_fraction']:.3f}")
                rates = (["–"] * len(fpr_keys) if r["score"] in BINARY  # one operating point
                         else [_fmt(r, k) for k in fpr_keys])
                lines.append(f"| {r['score']} | {_fmt(r, 'roc_auc')} | " + " | ".join(rates)
                             + f" | {flags} |")
            lines.append("")
    lines += _calibration_text(info["calibration"])
    if info["multiple_cutouts"]["detections"]:
        lines += _calibration_text(info["multiple_cutouts"]["calibration"], MULTIPLES_APART)
    lines += _trials_text(info["baseline"])
    return "\n".join(lines) + "\n"


def _interval_text(value, bounds, digits=3):
    """``value [lo, hi]``, or – when the value is not finite."""
    if not np.isfinite(value):
        return "–"
    return f"{value:.{digits}f} [{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def _params_text(params):
    return ", ".join(f"{k} {v:g}" for k, v in params.items())


def _baseline_text(base):
    """results.md lines on the tuned baseline, before the tables."""
    n_configs = len(base["trials"])
    lines = [f"*catalogue classifier*, the catalogue-only baseline: {base['model']} "
             f"({_params_text(base['params'])}) on {len(base['features'])} features "
             f"({', '.join(base['features'])}), trained on the {base['n_train']} detections "
             f"of the training tiles, chosen among {n_configs} configurations (grid and "
             "every validation AUC at the end of this report and in info.json) by its ROC "
             "AUC of unrecognised vs all others on the "
             f"{base['n_valid']} detections of the validation tiles: {base['valid_auc']:.3f}.",
             ""]
    if base["features_left_out"]:
        lines += [f"Left out of the baseline because a tile's catalogue lacks their columns "
                  f"(SExtracted before bh.param gained them): "
                  f"{', '.join(base['features_left_out'])}.", ""]
    return lines


def _paired_text(paired):
    """results.md lines on BLEND_PROB minus each catalogue classifier, unrecognised vs all
    others."""
    sel = [r for r in paired if r["comparison"] == "unrecognised vs all others"]
    if not sel:
        return []
    return ["Paired ROC AUC difference on the test tiles, unrecognised vs all others, "
            "BLEND_PROB minus each catalogue classifier (95 %, the same galaxy resamples for "
            "both): " + "; ".join(f"{r['score'][len('BLEND_PROB - '):]} ({r['subset']}) "
                                  f"{_fmt(r, 'roc_auc')}" for r in sel) + ".", ""]


def _multiples_text(multiple):
    """results.md paragraph on the detections of galaxies with a multiple cut-out."""
    if not multiple["detections"]:
        return []
    return [f"*{MULTIPLES_APART}*: without the {multiple['detections']} detections whose main "
            f"object is one of the {multiple['galaxies']} real galaxies here whose HST cut-out "
            "holds a second source with >= 10 % of the main one's flux (COSMOS indices "
            f"{', '.join(str(g) for g in multiple['gal_ids'])} of the real galaxies the test "
            "tiles draw; "
            "`bh_stage.study.cutouts`, SEP on the HST images). Each is two light sources the "
            "truth calls one galaxy, usually \"isolated\"; whether the two share a redshift is "
            "unknown, so they are reported apart, not labelled.", ""]


def _calibration_text(cal, subset=None):
    """results.md section on the calibration of BLEND_PROB on the test tiles."""
    names = {"mean_prob": "mean BLEND_PROB",
             "positive_fraction": "fraction of unrecognised blends",
             "relative_difference": "relative difference, mean BLEND_PROB / fraction - 1",
             "flagged_fraction": "fraction of detections flagged by BLEND_FLAG",
             "positives_flagged": "fraction of the unrecognised blends flagged",
             "flagged_positive": "fraction of the flagged detections that are unrecognised "
                                 "blends"}
    title = "## Calibration of BLEND_PROB on the test tiles" + (f" ({subset})" if subset else "")
    lines = [title, "",
             "The tile head's calibration and BLEND_FLAG's threshold were fitted on the "
             "validation tiles, never here. Probability rows: the "
             f"{cal['n_scored']} detections with a BLEND_PROB; BLEND_FLAG rows: all "
             f"{cal['n']}. 95 % intervals from the galaxy bootstrap.", "",
             "| quantity | value [95 %] |", "|---|---|"]
    lines += [f"| {text} | {_interval_text(cal[key], cal[key + '_95'])} |"
              for key, text in names.items()]
    lines += ["", "Reliability (bins of BLEND_PROB):", "",
              "| BLEND_PROB bin | detections | mean BLEND_PROB | fraction unrecognised [95 %] |",
              "|---|---|---|---|"]
    for b in cal["reliability"]:
        mean = f"{b['p_mean']:.3f}" if b["n"] else "–"
        lines.append(f"| {b['lo']:.1f}-{b['hi']:.1f} | {b['n']} | {mean} | "
                     f"{_interval_text(b['freq'], b['freq_95'])} |")
    return lines + [""]


def _trials_text(base):
    """results.md section: every configuration of the baseline and its validation AUC."""
    lines = ["## Catalogue baseline: configurations tried (validation tiles)", "",
             "Each fitted on the training tiles' detections and scored on the validation "
             "tiles' (ROC AUC, unrecognised vs all others); gradient boosting without early "
             "stopping (settings that differ only in max_iter are scored along one fit), "
             "logistic regression on standardised features. The chosen one is in bold.", "",
             "| model | settings | validation AUC |", "|---|---|---|"]
    for t in base["trials"]:
        auc = f"{t['valid_auc']:.4f}" + ("" if t["converged"] else " (not converged)")
        cells = [t["model"], _params_text(t["params"]), auc]
        if (t["model"], t["params"]) == (base["model"], base["params"]):
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def _jsonable(value):
    """``info`` as JSON: tuples as lists, numpy scalars as Python ones, NaN as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _csv(rows):
    import csv
    import io as _io

    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v[0]:.5g};{v[1]:.5g}" if isinstance(v, tuple) else v)
                         for k, v in r.items()})
    return buf.getvalue()


def _figures(table, cfg, outdir):
    """ROC curves per comparison, and BLEND_PROB's TPR vs separation and flux ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_output

    shown = ("BLEND_PROB", "catalogue classifier", "BH_PAPER_PROB", "SEP_NSRC",
             "FLUX_RADIUS", "-nearest detection")
    fig, axes = plt.subplots(1, len(COMPARISONS), figsize=(4.2 * len(COMPARISONS), 4))
    for ax, comparison in zip(axes, COMPARISONS):
        rows, labels = comparison_labels(table, comparison)
        for name in shown:
            s = np.nan_to_num(table[name][rows], nan=-np.inf)
            fpr, tpr = metrics.roc_curve(s, labels)
            ax.plot(fpr, tpr, label=f"{name} ({metrics.roc_auc(s, labels):.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=comparison, xlabel="FPR", ylabel="TPR", xscale="log", xlim=(1e-3, 1))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_output(outdir / "roc.png", overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

    rows, labels = comparison_labels(table, "unrecognised vs all others")
    sub = table[rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for name in ("BLEND_PROB", "catalogue classifier"):
        s = np.nan_to_num(sub[name], nan=-np.inf)
        t = metrics.threshold_at_fpr(s, labels, 0.05)
        caught = s[labels == 1] >= t
        for ax, key, bins in ((axes[0], "COMP_SEPARATION_PIX", np.arange(0, 13.5, 1.5)),
                              (axes[1], "COMP_FLUX_RATIO", np.linspace(0.1, 1.0, 7))):
            v = sub[key][labels == 1]
            idx = np.digitize(v, bins) - 1
            centres = 0.5 * (bins[1:] + bins[:-1])
            frac = [caught[idx == b].mean() if (idx == b).any() else np.nan
                    for b in range(len(centres))]
            ax.plot(centres, frac, "o-", label=f"{name}, FPR 0.05")
            ax.set(xlabel=key, ylabel="TPR, unrecognised blends", ylim=(0, 1))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_output(outdir / "tpr_vs_separation.png", overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _gallery(table, folders, outdir, n_per_row=8):
    """Stamps of caught, missed and falsely flagged unrecognised blends (``BLEND_FLAG``),
    the highest ``BLEND_PROB`` first, each titled with its tile row and truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_output

    stamps = {f.name: tileset.detection_stamps(f)[0] for f in folders}
    row_in_tile = np.concatenate([np.arange(len(stamps[f.name])) for f in folders])
    flag, unrec = table["BLEND_FLAG"] > 0, table["UNRECOGNISED"] == 1
    rows = {"caught": flag & unrec, "missed": ~flag & unrec, "false": flag & ~unrec}
    fig, axes = plt.subplots(3, n_per_row, figsize=(1.6 * n_per_row, 5.4))
    for ax_row, (name, keep) in zip(axes, rows.items()):
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-table["BLEND_PROB"][idx])][:n_per_row]
        for ax, i in zip(ax_row, list(idx) + [None] * (n_per_row - len(idx))):
            ax.set_axis_off()
            if i is None:
                continue
            stamp = stamps[table["TILE"][i].decode()][row_in_tile[i]]
            ax.imshow(np.arcsinh(stamp / 20.0), origin="lower", cmap="gray_r")
            sep = table["COMP_SEPARATION_PIX"][i]
            ax.set_title(f"{name} #{row_in_tile[i] + 1}\np={table['BLEND_PROB'][i]:.2f}"
                         + (f" d={sep:.1f}" if np.isfinite(sep) else ""), fontsize=7)
    fig.tight_layout()
    with atomic_output(outdir / "gallery.png", overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run_evaluate_tile(cfg, progress=None):
    """``bh-stage evaluate-tile CONFIG``: write the report; return one summary line."""
    from ..io import atomic_output, check_output

    outdir = Path(cfg.output_dir)
    for name in ("results.md", "metrics.csv", "detections.npz", "info.json"):
        check_output(outdir / name, cfg.overwrite, make_parents=True)
    rows, table, info = evaluate_tile(cfg, progress)
    command = "bh-stage evaluate-tile CONFIG"
    import json

    for name, text in (("results.md", _markdown(cfg, rows, info, command)),
                       ("metrics.csv", _csv(rows)),
                       ("info.json", json.dumps(_jsonable(info), indent=1, allow_nan=False)
                        + "\n")):
        with atomic_output(outdir / name, overwrite=cfg.overwrite) as tmp:
            tmp.write_text(text)
    with atomic_output(outdir / "detections.npz", overwrite=cfg.overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, table=table)
    _figures(table, cfg, outdir)
    _gallery(table, tileset.tile_folders(cfg.tiles, "test"), outdir)
    head = [r for r in rows if r["subset"] == "all" and r["score"] == "BLEND_PROB"
            and r["comparison"] == "unrecognised vs all others"][0]
    return (f"evaluate-tile: {info['n_test_detections']} test detections; BLEND_PROB on "
            f"unrecognised blends: AUC {_fmt(head, 'roc_auc')}, TPR at 5 % FPR "
            f"{_fmt(head, 'tpr_at_fpr_0.05')}; report in {outdir / 'results.md'}")
