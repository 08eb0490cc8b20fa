"""VIGNET stamps against tile stamps: the same BLEND_PROB on a real source-extractor catalogue?

    python bench/bench_vignet.py TILE.fits [--weight TILE.weight.fits] [--tile-head NAME]

Runs `source-extractor` on the tile with `VIGNET(51,51)` added to example_config's parameters,
then `bh-stage run` twice on that catalogue: stamps cut from the tile (`stamp.source: tile`)
and stamps read from VIGNET (`stamp.source: vignet`, the tile's rms given), both centred on
XWIN/YWIN (VIGNET is shifted from SExtractor's X_IMAGE/Y_IMAGE centre). Reports |ΔBLEND_PROB|
(median, 99th percentile, maximum) over the interior objects (no BH_EDGE, no BH_MASKED in
either run), overall and for the objects whose two centres differ by 1 px or more (where the
shift acts: merged objects). The remaining differences come from the two background maps
(SExtractor's in VIGNET, SEP's in the stage) and from noise filling what the shift brings in.
Writes bench/results/vignet_<tile>.json.
"""

import subprocess
import tempfile
from pathlib import Path

import fitsio
import numpy as np

import benchlib


def main():
    parser = benchlib.parser(__doc__)
    parser.add_argument("tile", type=Path)
    parser.add_argument("--weight", type=Path)
    parser.add_argument("--tile-head", default="default")
    parser.add_argument("--mask-type", default="NONE", choices=("NONE", "CORRECT", "BLANK"),
                        help="SExtractor's MASK_TYPE (default %(default)s; with CORRECT or "
                        "BLANK, VIGNET blanks the neighbours, which the stage counts as "
                        "masked, so those objects leave the comparison)")
    args = parser.parse_args()

    from bh_stage.config import RunConfig, config_from_dict
    from bh_stage.sep_flags import BH_EDGE, BH_MASKED
    from bh_stage.stage import run_stage
    from bh_stage.stamps import nearest_pixel

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        param = Path("example_config/sextractor/bh.param").read_text()
        (tmp / "vignet.param").write_text(param.replace("VIGNET(5,5)", "VIGNET(51,51)"))
        cat = tmp / "tile.cat"
        cmd = ["source-extractor", str(args.tile), "-c", "example_config/sextractor/bh.sex",
               "-PARAMETERS_NAME", str(tmp / "vignet.param"), "-CATALOG_NAME", str(cat),
               "-MASK_TYPE", args.mask_type]
        if args.weight:
            cmd += ["-WEIGHT_TYPE", "MAP_WEIGHT", "-WEIGHT_IMAGE", str(args.weight)]
        subprocess.run(cmd, check=True, capture_output=True)
        common = {"catalogue": str(cat), "tile_head": args.tile_head,
                  "weight": str(args.weight) if args.weight else None}
        tile_out, vignet_out = tmp / "tile_bh.cat", tmp / "vignet_bh.cat"
        run_stage(config_from_dict(RunConfig, {**common, "output": str(tile_out)}), args.tile)
        rms = fitsio.read_header(str(tile_out), ext="LDAC_OBJECTS")["BH_RMS"]
        run_stage(config_from_dict(RunConfig, {**common, "output": str(vignet_out),
                                               "stamp": {"source": "vignet", "rms_adu": rms}}),
                  args.tile)
        a = fitsio.read(str(tile_out), ext="LDAC_OBJECTS")
        b = fitsio.read(str(vignet_out), ext="LDAC_OBJECTS")
    interior = (((a["BH_FLAGS"] | b["BH_FLAGS"]) & (BH_EDGE | BH_MASKED)) == 0)
    interior &= np.isfinite(a["BLEND_PROB"]) & np.isfinite(b["BLEND_PROB"])
    moved = ((nearest_pixel(a["X_IMAGE"] - 1) != nearest_pixel(a["XWIN_IMAGE"] - 1))
             | (nearest_pixel(a["Y_IMAGE"] - 1) != nearest_pixel(a["YWIN_IMAGE"] - 1)))
    diff = np.abs(a["BLEND_PROB"] - b["BLEND_PROB"])
    out = {"tile": str(args.tile), "tile_head": args.tile_head, "mask_type": args.mask_type,
           "n_objects": int(len(a)),
           "flags_equal": bool(np.array_equal(a["BH_FLAGS"], b["BH_FLAGS"]))}
    for name, keep in (("interior", interior), ("interior_centres_differ", interior & moved)):
        d = diff[keep]
        out[name] = {"n": int(keep.sum()), "median": float(np.median(d)) if d.size else None,
                     "p99": float(np.percentile(d, 99)) if d.size else None,
                     "max": float(d.max()) if d.size else None}
        print(f"{name}: {out[name]}")
    benchlib.write_result(args.output or f"vignet_{args.tile.stem}.json", out)


if __name__ == "__main__":
    main()
