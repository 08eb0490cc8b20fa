"""Compare two output catalogues of ``bh-stage run`` HDU by HDU: header cards and table bytes.

    python bench/compare_catalogues.py OLD.cat NEW.cat [--ignore BH_VERS,BH_DATE]

Prints one line per HDU (identical, or which cards / columns differ; for each column that
differs how many rows and by how much, for a real-valued card both values) and exits 1 if
anything other than the ignored header keys differs. Used to show that a refactoring changed
no output (docs/layout.md).
"""

import argparse
import sys

import fitsio
import numpy as np


def compare(old, new, ignore):
    """Return a list of difference lines between two FITS files (empty: identical)."""
    diffs = []
    with fitsio.FITS(old) as a, fitsio.FITS(new) as b:
        if len(a) != len(b):
            return [f"{len(a)} HDUs against {len(b)}"]
        for i, (ha, hb) in enumerate(zip(a, b)):
            ca = [(r["name"], r.get("value"), r.get("comment")) for r in ha.read_header().records()
                  if r["name"] not in ignore]
            cb = [(r["name"], r.get("value"), r.get("comment")) for r in hb.read_header().records()
                  if r["name"] not in ignore]
            if ca != cb:
                names = sorted({c[0] for c in set(ca) ^ set(cb)})
                diffs.append(f"HDU {i}: header cards differ: {', '.join(names)}")
                va, vb = (dict((c[0], c[1]) for c in cards) for cards in (ca, cb))
                diffs += [f"  {name}: {va[name]!r} -> {vb[name]!r}" for name in names
                          if isinstance(va.get(name), float) and isinstance(vb.get(name), float)]
            if ha.has_data() != hb.has_data():
                diffs.append(f"HDU {i}: data in one file only")
            elif ha.has_data():
                da, db = ha.read(), hb.read()
                if da.dtype != db.dtype or da.shape != db.shape:
                    diffs.append(f"HDU {i}: dtype or shape differ")
                elif da.tobytes() != db.tobytes():
                    cols = da.dtype.names or ("<image>",)
                    bad = [c for c in cols if (da[c] if da.dtype.names else da).tobytes()
                           != (db[c] if db.dtype.names else db).tobytes()]
                    diffs.append(f"HDU {i}: bytes differ in {', '.join(bad)}")
                    for c in bad:
                        diffs.append(f"  {c}: " + _column_difference(
                            da[c] if da.dtype.names else da, db[c] if db.dtype.names else db))
    return diffs


def _column_difference(a, b):
    """How one column differs: rows that differ and, for numbers, |new - old|."""
    differ = np.asarray(a != b).reshape(len(a), -1).any(axis=1)
    text = f"{int(differ.sum())} of {len(a)} rows differ"
    if np.issubdtype(a.dtype, np.number) and np.issubdtype(b.dtype, np.number):
        d = np.abs(b.astype(np.float64) - a.astype(np.float64)).reshape(len(a), -1).max(axis=1)
        d = d[np.isfinite(d)]
        if d.size:
            text += (f"; |new - old| median {np.median(d):.2g}, 99th percentile "
                     f"{np.percentile(d, 99):.2g}, largest {d.max():.2g}")
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--ignore", default="BH_VERS,BH_DATE",
                   help="comma-separated header keys not compared (default %(default)s)")
    args = p.parse_args(argv)
    diffs = compare(args.old, args.new, set(args.ignore.split(",")))
    print("\n".join(diffs) if diffs else f"identical but {args.ignore}: {args.old} {args.new}")
    return 1 if diffs else 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
