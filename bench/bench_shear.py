"""Shear-level bench (issue 13): multiplicative and additive shear bias (m, c) after each cut.

For each seed, two test-half tiles (``tileset.simulate_config`` role 'test': real galaxies of
the test half only) identical but for a constant shear ``+g`` or ``-g`` on one component
(even seeds g1, odd seeds g2): same galaxies, positions, PSF and noise. Each is SExtracted
(``tileset.prepare_tile``) and run through ``bh-stage run`` (RunConfig defaults); every
detection gets a REGAUSS shape from GalSim's HSM (``bh_stage.study.shear``) on a 51x51 stamp cut
as the stage cuts it, neighbours left in. Detections of the two images are matched by
position (mutual nearest, < 1 px) so each gives a paired difference.

Selections: every valid shape; SExtractor FLAGS&2 == 0; BLEND_FLAG == 0; BLEND_PROB < t;
the catalogue-only classifier (``evaluate_tile.catalogue_classifiers``, trained on the
training tiles, chosen on the validation tiles) cut at the same fractions kept as the
BLEND_PROB cuts; truth ISOLATED (the floor). Each is made two ways: on each image separately
(what a survey does; includes the selection's own response) and once on the +g image, applied
to both (common). Errors: a paired bootstrap over sky galaxies (the main true object of a
detection: tile seed and truth ID), and for the headline also over COSMOS galaxies (the 51
test-half HST galaxies each appear many times), see ``docs/shear.md``.

    python bench/bench_shear.py   # 8 seeds, 16 4000-px tiles: 25 min on 2 idle cores, 32 shared
    python bench/bench_shear.py --quick   # smoke test, about 1 min, in /tmp/bh_shear_quick

Writes ``bench/results/shear_<date>.json`` (``--quick``: ``<work-dir>/shear_quick.json``),
and with ``--figure`` the plot of m against the fraction kept.
"""

import dataclasses
import datetime
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from bh_stage import io
from bh_stage.config import RunConfig, TileSetConfig, config_from_dict
from bh_stage.cues import FEATURE_NAMES
from bh_stage.stamps import cut_stamps, nearest_pixel
from bh_stage.study import metrics, tileset
from bh_stage.study.evaluate_tile import catalogue_classifiers
from bh_stage.study.shear import hsm_shapes, responsivity, shear_bias
from bh_stage.study.simulate import psf_image

import benchlib

REPO = benchlib.REPO

STAMP_PIX = 51
MATCH_PIX = 1.0
PROB_CUTS = (0.3, 0.1, 0.05, 0.02)
FIRST_SEED = 401
"""Bench tiles use seeds FIRST_SEED, FIRST_SEED + 1, ...: not those of the study's tiles."""


def parse_args(argv=None):
    p = benchlib.parser(__doc__, quick="smoke test: 2 seeds of 1000 px, its own small "
                                       "training tiles")
    p.add_argument("--seeds", type=int, default=8, help="tile seeds (each: a +g and a -g tile)")
    p.add_argument("--size-pix", type=int, default=4000, help="side of each tile")
    p.add_argument("--g", type=float, default=0.02, help="applied shear")
    p.add_argument("--work-dir", default="/tmp/bh_shear", help="bench tiles go here")
    p.add_argument("--tiles-dir", default="/work/tiles",
                   help="training and validation tiles of the catalogue classifier")
    p.add_argument("--cosmos-dir", default="/work/shared/cosmos")
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--figure", default=None, help="m vs fraction kept (PNG)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.size_pix, args.n_boot = 2, 1000, 50
        if args.work_dir == "/tmp/bh_shear":
            args.work_dir = "/tmp/bh_shear_quick"
    return args


def tile_sets(args):
    """The bench's TileSetConfig and the one of the classifier's training tiles."""
    common = {"cosmos_dir": args.cosmos_dir,
              "sextractor_config": str(REPO / "example_config/sextractor/bh.sex")}
    bench = config_from_dict(TileSetConfig, dict(common, work_dir=args.work_dir,
                                                 size_pix=args.size_pix))
    if args.quick:  # small training tiles of its own: runs where /work/tiles does not exist
        train = config_from_dict(TileSetConfig, dict(
            common, work_dir=str(Path(args.work_dir) / "train_tiles"), size_pix=1000,
            train_seeds=[101], valid_seeds=[201], test_seeds=[]))
    else:
        train = config_from_dict(TileSetConfig, dict(common, work_dir=args.tiles_dir))
    return bench, train


def catalogue_classifier(train_tiles):
    """Train the catalogue-only classifier on the training tiles (evaluate-tile's one)."""
    data = {}
    for role in ("train", "valid"):
        tables = [tileset.detection_table(f)
                  for f in tileset.prepare_role(train_tiles, role)]
        data[role] = (np.concatenate([t[2] for t in tables]),
                      np.concatenate([t[1]["UNRECOGNISED"] for t in tables]))
    name, predict, aucs = catalogue_classifiers(data["train"], data["valid"], 0)
    return name, predict, aucs


def measure_tile(folder, sim_cfg, tiles):
    """Simulate, SExtract, run the stage and measure shapes of one tile; cached as npz."""
    import fitsio

    from bh_stage.stage import run_stage

    cache = folder / "shear_detections.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    files = tileset.prepare_tile(folder, sim_cfg, tiles.sextractor_config)
    out = folder / "tile_bh.cat"
    run_cfg = config_from_dict(RunConfig, {
        "catalogue": str(files["catalogue"]), "weight": str(files["weight"]),
        "output": str(out), "overwrite": True})
    run_stage(run_cfg, files["image"])
    (x, y), classes, feats = tileset.detection_table(folder)
    stage = fitsio.read(str(out), ext="LDAC_OBJECTS")
    image, header = io.read_tile(files["image"])
    sigma = float(header["SKYSIG"])
    psf = psf_image(sim_cfg, header["BH_PSFG1"], header["BH_PSFG2"], STAMP_PIX)
    x0 = np.where(np.isfinite(x), x, 0.0)  # 0-based positions (io converts SExtractor's)
    y0 = np.where(np.isfinite(y), y, 0.0)
    # the simulated tile is sky-subtracted: stamps from the raw pixels, no background model
    stamps, _, _ = cut_stamps(image, x0, y0, STAMP_PIX, 0, fill_sigma=sigma, seed=0)
    shapes = hsm_shapes(stamps, psf, sigma ** 2, x0 - nearest_pixel(x0),
                        y0 - nearest_pixel(y0))
    d = {"x": x0, "y": y0, "features": feats, "BLEND_PROB": stage["BLEND_PROB"],
         "BLEND_FLAG": stage["BLEND_FLAG"], "BH_THR": fitsio.read_header(
             str(out), ext="LDAC_OBJECTS").get("BH_THR", np.nan)}
    for name in shapes.dtype.names:
        d[name] = shapes[name]
    for name in classes.dtype.names:
        d[name] = classes[name]
    with io.atomic_output(cache, overwrite=True) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **d)
    return d


def match(a, b):
    """Rows (ia, ib) of mutual nearest detections of two images closer than MATCH_PIX."""
    from scipy.spatial import cKDTree

    dist_ab, near_ab = cKDTree(np.c_[b["x"], b["y"]]).query(np.c_[a["x"], a["y"]])
    _, near_ba = cKDTree(np.c_[a["x"], a["y"]]).query(np.c_[b["x"], b["y"]])
    ia = np.flatnonzero((dist_ab < MATCH_PIX) & (near_ba[near_ab] == np.arange(len(near_ab))))
    return ia, near_ab[ia]


def pair_table(tiles_data, predict):
    """One row per matched detection pair; per-image columns end in _P (+g) and _M (-g)."""
    rows = []
    for seed, comp, plus, minus in tiles_data:
        ip, im = match(plus, minus)
        t = {"SEED": np.full(ip.size, seed), "COMP": np.full(ip.size, comp)}
        for tag, d, i in (("_P", plus, ip), ("_M", minus, im)):
            f = dict(zip(FEATURE_NAMES, d["features"][i].T))
            t["E1" + tag], t["E2" + tag] = d["E1"][i], d["E2"][i]
            t["VALID" + tag] = d["VALID"][i]
            t["BLEND_PROB" + tag] = d["BLEND_PROB"][i]
            t["BLEND_FLAG" + tag] = d["BLEND_FLAG"][i]
            t["FLAGS2" + tag] = f["FLAGS_BLENDED"]
            t["CAT" + tag] = predict(d["features"][i])
            t["ISOLATED" + tag] = d["ISOLATED"][i]
        for name in ("MAIN_ID", "GROUP", "MAIN_KIND", "UNRECOGNISED", "COMP_SEPARATION_PIX",
                     "COMP_FLUX_RATIO", "MAIN_SNR"):
            t[name] = plus[name][ip]
        t["N_DET_P"], t["N_DET_M"] = np.full(ip.size, len(plus["x"])), np.full(
            ip.size, len(minus["x"]))
        rows.append(t)
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def selections(t):
    """Selection name -> (kept on +g, kept on -g), each with a valid shape on that image."""
    out = {}
    for tag in ("_P", "_M"):
        v = t["VALID" + tag]
        s = {"all valid shapes": v,
             "FLAGS&2 == 0": v & (t["FLAGS2" + tag] == 0),
             "BLEND_FLAG == 0": v & (t["BLEND_FLAG" + tag] == 0)}
        for cut in PROB_CUTS:
            s[f"BLEND_PROB < {cut:g}"] = v & (t["BLEND_PROB" + tag] < cut)
        s["truth ISOLATED"] = v & (t["ISOLATED" + tag] == 1)
        for name, keep in s.items():
            out.setdefault(name, []).append(keep)
    # BLEND_PROB at the fraction FLAGS&2 keeps, the catalogue classifier at the fraction each
    # BLEND_PROB cut keeps (thresholds from the +g image, applied to both)
    for name in [n for n in out if n.startswith("BLEND_") or n == "FLAGS&2 == 0"]:
        out[f"catalogue, as {name}"] = _at_fraction(t, "CAT", out[name][0])
    out["BLEND_PROB, as FLAGS&2 == 0"] = _at_fraction(t, "BLEND_PROB", out["FLAGS&2 == 0"][0])
    return {k: tuple(v) for k, v in out.items()}


def _at_fraction(t, score, keep_plus):
    """Keep valid shapes with ``score`` below the threshold that keeps as many as
    ``keep_plus`` on the +g image; return the masks of both images."""
    ranked = np.sort(t[score + "_P"][t["VALID_P"]])
    n_keep = int(keep_plus.sum())
    thr = ranked[n_keep] if n_keep < ranked.size else np.inf
    return [t["VALID" + tag] & (t[score + tag] < thr) for tag in ("_P", "_M")]


def diagnostics(t):
    """Subsets of the common selection telling which blends bias shear."""
    v = t["VALID_P"] & t["VALID_M"]
    unrec = v & (t["UNRECOGNISED"] == 1)
    sep, ratio = t["COMP_SEPARATION_PIX"], t["COMP_FLUX_RATIO"]
    kept = t["BLEND_FLAG_P"] == 0
    return {"unrecognised blends": unrec, "not unrecognised": v & (t["UNRECOGNISED"] == 0),
            "unrecognised, kept by BLEND_FLAG == 0": unrec & kept,
            "unrecognised, flagged by BLEND_FLAG": unrec & ~kept,
            "unrecognised, separation < 3 px": unrec & (sep < 3),
            "unrecognised, separation 3-6 px": unrec & (sep >= 3) & (sep < 6),
            "unrecognised, separation >= 6 px": unrec & (sep >= 6),
            "unrecognised, flux ratio < 0.3": unrec & (ratio < 0.3),
            "unrecognised, flux ratio >= 0.3": unrec & (ratio >= 0.3)}


QUANTITIES = ("m1", "m2", "m", "c1", "c2", "fraction_kept")


def statistic(t, sels, diags, g):
    """Return f(rows) -> the vector of QUANTITIES for every (selection, mode) and diagnostic."""
    e = {(k, tag): t[f"E{k}{tag}"] for k in (1, 2) for tag in ("_P", "_M")}
    comp = t["COMP"]
    both = t["VALID_P"] & t["VALID_M"]

    def quantities(idx, keep_p, keep_m, resp):
        kp, km = keep_p[idx], keep_m[idx]
        vals = []
        for k in (1, 2):
            on = comp[idx] == k
            m, _ = shear_bias(e[k, "_P"][idx][on], e[k, "_M"][idx][on], kp[on], km[on], g, resp)
            vals.append(m)
        cs = [shear_bias(e[k, "_P"][idx], e[k, "_M"][idx], kp, km, g, resp)[1] for k in (1, 2)]
        frac = kp.mean() if idx.size else np.nan
        return [vals[0], vals[1], 0.5 * (vals[0] + vals[1]), cs[0], cs[1], frac]

    def stat(idx):
        v = both[idx]
        resp = responsivity(np.r_[e[1, "_P"][idx][v], e[1, "_M"][idx][v]],
                            np.r_[e[2, "_P"][idx][v], e[2, "_M"][idx][v]])
        out = []
        for keep_p, keep_m in sels.values():
            out += quantities(idx, keep_p, keep_m, resp)  # separate: the survey's way
            out += quantities(idx, keep_p & t["VALID_M"], keep_p & t["VALID_M"], resp)
        for keep in diags.values():
            out += quantities(idx, keep, keep, resp)
        return np.array(out + [resp])
    return stat


def groups_of(t, unit):
    """Bootstrap unit of each pair: 'sky' galaxy (seed, truth ID) or 'cosmos' galaxy."""
    spurious = t["MAIN_ID"] < 0
    if unit == "sky":
        key = t["SEED"].astype(np.int64) * 10_000_000 + t["MAIN_ID"]
    else:
        galaxy = (t["MAIN_KIND"] != b"star") & ~spurious
        key = np.where(galaxy, t["GROUP"], 10_000_000 + t["SEED"] * 1_000_000 + t["MAIN_ID"])
    key = key.astype(np.int64).copy()
    key[spurious] = -1 - np.arange(spurious.sum())
    return key


def analyse(t, g, n_boot):
    """Point values and 68 / 95 % intervals (sky and COSMOS galaxy bootstraps)."""
    sels, diags = selections(t), diagnostics(t)
    stat = statistic(t, sels, diags, g)
    point = stat(np.arange(len(t["SEED"])))
    boots = {unit: metrics.group_bootstrap(groups_of(t, unit), stat, n_boot, seed=0)
             for unit in ("sky", "cosmos")}
    nq = len(QUANTITIES)

    def block(k):
        sl = slice(k * nq, (k + 1) * nq)
        row = {}
        for q, p, bs, bc in zip(QUANTITIES, point[sl], boots["sky"][:, sl].T,
                                boots["cosmos"][:, sl].T):
            row[q] = float(p)
            row[q + "_68"] = metrics.interval(bs, 0.68)
            row[q + "_95"] = metrics.interval(bs, 0.95)
            row[q + "_95_cosmos"] = metrics.interval(bc, 0.95)
        return row, sl

    result = {"selections": {}, "diagnostics": {}, "responsivity": float(point[-1])}
    slices = {}
    k = 0
    for name in sels:
        for mode in ("separate", "common"):
            row, slices[name, mode] = block(k)
            result["selections"].setdefault(name, {})[mode] = row
            k += 1
        sep, com = slices[name, "separate"], slices[name, "common"]
        # selection response: the part of m that the selection itself makes
        im = QUANTITIES.index("m")
        d = point[sep][im] - point[com][im]
        result["selections"][name]["m_separate_minus_common"] = {
            "value": float(d), "95": metrics.interval(
                boots["sky"][:, sep][:, im] - boots["sky"][:, com][:, im], 0.95)}
    for name in diags:
        row, _ = block(k)
        row["n"] = int(diags[name].sum())
        result["diagnostics"][name] = row
        k += 1
    # paired differences at equal fraction kept: |m| of a BLEND_PROB cut minus the catalogue's
    im = QUANTITIES.index("m")
    result["abs_m_differences"] = {}
    versus = [(n, f"catalogue, as {n}") for n in sels if f"catalogue, as {n}" in sels]
    for (name, other), mode in itertools.product(
            versus + [("BLEND_PROB, as FLAGS&2 == 0", "FLAGS&2 == 0")], ("separate", "common")):
        a, b = slices[name, mode], slices[other, mode]
        diff = {u: np.abs(boots[u][:, a][:, im]) - np.abs(boots[u][:, b][:, im])
                for u in boots}
        result["abs_m_differences"][f"|m| {name} - |m| {other}, {mode}"] = {
            "value": float(abs(point[a][im]) - abs(point[b][im])),
            "95": metrics.interval(diff["sky"], 0.95),
            "95_cosmos": metrics.interval(diff["cosmos"], 0.95)}
    return result


def figure(result, path):
    """m (mean of m1, m2) against the fraction kept, separate selections, 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = result["selections"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    curves = {"BLEND_PROB (stage)": [n for n in sel if n.startswith("BLEND_")],
              "catalogue classifier": [n for n in sel if n.startswith("catalogue")]}
    for (label, names), colour in zip(curves.items(), ("C0", "C1")):
        for mode, style in (("separate", "-o"), ("common", ":")):
            rows = sorted((sel[n][mode] for n in names), key=lambda r: r["fraction_kept"])
            x = [r["fraction_kept"] for r in rows]
            y = [r["m"] for r in rows]
            err = np.array([[r["m"] - r["m_95"][0], r["m_95"][1] - r["m"]] for r in rows]).T
            ax.errorbar(x, y, yerr=err if mode == "separate" else None, fmt=style,
                        color=colour, capsize=3, alpha=1 if mode == "separate" else 0.6,
                        label=f"{label}" + ("" if mode == "separate" else ", common sel."))
    for name, marker, colour in (("FLAGS&2 == 0", "s", "C2"), ("all valid shapes", "D", "k"),
                                 ("truth ISOLATED", "*", "C3")):
        r = sel[name]["separate"]
        ax.errorbar([r["fraction_kept"]], [r["m"]],
                    yerr=[[r["m"] - r["m_95"][0]], [r["m_95"][1] - r["m"]]], fmt=marker,
                    color=colour, capsize=3, ms=8, label=name)
        r = sel[name]["common"]
        ax.plot([r["fraction_kept"]], [r["m"]], marker, color=colour, ms=8, mfc="none")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("fraction of detections kept")
    ax.set_ylabel("m = (m1 + m2) / 2  [95 %, sky-galaxy bootstrap]")
    ax.set_title("filled: selection on each image; dotted, open: common selection",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with io.atomic_output(path, overwrite=True, make_parents=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    bench, train = tile_sets(args)
    cat_name, predict, cat_aucs = catalogue_classifier(train)
    t_train = time.perf_counter() - t0
    print(f"catalogue classifier: {cat_name} ({t_train:.0f} s)", flush=True)
    data, seconds = [], []
    for k in range(args.seeds):
        seed, comp = FIRST_SEED + k, 1 + k % 2
        pair = []
        for sign, tag in ((1, "p"), (-1, "m")):
            t1 = time.perf_counter()
            shear = {f"shear_g{comp}": sign * args.g}
            sim_cfg = tileset.simulate_config(bench, "test", seed, **shear)
            folder = Path(args.work_dir) / f"s{seed}_g{comp}{tag}"
            pair.append(measure_tile(folder, sim_cfg, bench))
            seconds.append(time.perf_counter() - t1)
            print(f"seed {seed} g{comp} {sign * args.g:+g}: {len(pair[-1]['x'])} detections, "
                  f"{seconds[-1]:.0f} s", flush=True)
        data.append((seed, comp, *pair))
    t = pair_table(data, predict)
    t2 = time.perf_counter()
    result = analyse(t, args.g, args.n_boot)
    n_det = [(len(p["x"]), len(m["x"])) for _, _, p, m in data]
    result.update({
        "command": "python bench/bench_shear.py " + " ".join(sys.argv[1:] if argv is None
                                                             else argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "applied_shear": args.g, "seeds": [s for s, *_ in data],
        "component_of_seed": {s: c for s, c, *_ in data}, "size_pix": args.size_pix,
        "tile_set": dataclasses.asdict(bench), "n_bootstrap": args.n_boot,
        "n_detections_per_image": n_det, "n_matched_pairs": int(len(t["SEED"])),
        "matched_fraction": float(len(t["SEED"]) / sum(p for p, _ in n_det)),
        "n_sky_galaxies": int(np.unique(groups_of(t, "sky")).size),
        "n_cosmos_groups": int(np.unique(groups_of(t, "cosmos")).size),
        "catalogue_classifier": cat_name, "catalogue_valid_auc": cat_aucs,
        "blend_thr": float(data[0][2]["BH_THR"]),
        "seconds": {"classifier": t_train, "per_tile": seconds, "analysis":
                    time.perf_counter() - t2, "total": time.perf_counter() - t0},
    })
    benchlib.write_result(args.output or (
        Path(args.work_dir) / "shear_quick.json" if args.quick
        else f"shear_{datetime.date.today():%Y%m%d}.json"), result)
    if args.figure:
        figure(result, args.figure)
    print(table(result))
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return result


def table(result):
    """Markdown table of the selections (separate selections; common m and the difference)."""
    def f(row, q, d=4):
        lo, hi = row[q + "_95"]
        return f"{row[q]:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]"

    lines = ["| selection | kept | m1 | m2 | c1 | c2 | m, common selection | "
             "m separate - common |", "|---|---|---|---|---|---|---|---|"]
    for name, r in result["selections"].items():
        s, c, d = r["separate"], r["common"], r["m_separate_minus_common"]
        lines.append(f"| {name} | {s['fraction_kept']:.3f} | {f(s, 'm1')} | {f(s, 'm2')} | "
                     f"{f(s, 'c1')} | {f(s, 'c2')} | {f(c, 'm')} | {d['value']:+.4f} "
                     f"[{d['95'][0]:+.4f}, {d['95'][1]:+.4f}] |")
    lines += ["", "| paired difference (selection mode) | value [95 % sky] | "
              "[95 % COSMOS] |", "|---|---|---|"]
    for name, d in result["abs_m_differences"].items():
        lines.append(f"| {name} | {d['value']:+.4f} [{d['95'][0]:+.4f}, {d['95'][1]:+.4f}] | "
                     f"[{d['95_cosmos'][0]:+.4f}, {d['95_cosmos'][1]:+.4f}] |")
    lines += ["", "| subset (common selection) | pairs | m | c1 | c2 |", "|---|---|---|---|---|"]
    for name, r in result["diagnostics"].items():
        lines.append(f"| {name} | {r['n']} | {f(r, 'm')} | {f(r, 'c1')} | {f(r, 'c2')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
