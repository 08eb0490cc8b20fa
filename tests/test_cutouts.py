"""Second sources in the real galaxies' HST cut-outs (bh_stage.study.cutouts)."""

import fitsio
import numpy as np
import pytest

from bh_stage.study import cutouts
from bh_stage.study.tiletruth import TRUTH_CLASS_DTYPE, object_units

from conftest import MULTIPLE_COSMOS_INDICES, load_bench


def gaussian(shape, x0, y0, flux, sigma_pix=2.0):
    y, x = np.mgrid[:shape[0], :shape[1]]
    return flux * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma_pix ** 2)) / (
        2 * np.pi * sigma_pix ** 2)


def pair_image(ratio, separation_pix, shape=(64, 64), flux=5000.0, seed=1):
    """A source at the centre and one at ``separation_pix`` along x with ``ratio`` of its
    flux, plus unit Gaussian noise (0-based centre (shape - 1) / 2)."""
    c = (shape[0] - 1) / 2.0
    noise = np.random.default_rng(seed).normal(0.0, 1.0, shape)
    return (gaussian(shape, c, c, flux) + gaussian(shape, c + separation_pix, c, ratio * flux)
            + noise)


def test_single_source_has_no_second():
    n, ratio, sep_pix = cutouts.image_components(pair_image(0.0, 0.0), 1.0)
    assert (n, ratio) == (1, 0.0) and np.isnan(sep_pix)


def test_pair_gives_flux_ratio_and_separation():
    n, ratio, sep_pix = cutouts.image_components(pair_image(0.3, 15.0), 1.0)
    assert n == 2
    assert ratio == pytest.approx(0.3, rel=0.1)
    assert sep_pix == pytest.approx(15.0, abs=0.5)


def test_main_source_is_the_central_one_even_when_fainter():
    # a bright neighbour beside a faint central galaxy: ratio > 1 (as for COSMOS index 15)
    n, ratio, _ = cutouts.image_components(pair_image(2.0, 15.0), 1.0)
    assert n == 2 and ratio == pytest.approx(2.0, rel=0.1)


def test_multiple_cutouts_uses_the_flux_ratio_rule():
    table = np.zeros(4, dtype=cutouts.CUTOUT_DTYPE)
    table["INDEX"] = [3, 1, 0, 2]
    table["SECOND_FLUX_RATIO"] = [0.5, 0.05, 0.0, 0.1]
    assert cutouts.multiple_cutouts(table).tolist() == [2, 3]
    assert cutouts.multiple_cutouts(table, 0.2).tolist() == [3]


def test_cutout_components_reads_catalogue_images(tmp_path):
    # a GalSim-like real-galaxy catalogue: image HDU per galaxy, a constant NOISE_MEAN
    # offset subtracted before detection, separations in arcsec via PIXEL_SCALE
    images = [pair_image(0.0, 0.0, seed=2) + 7.0, pair_image(0.5, 12.0, seed=3) + 7.0]
    with fitsio.FITS(str(tmp_path / "imgs.fits"), "rw", clobber=True) as f:
        for im in images:
            f.write(im.astype(np.float32))
    cat = np.zeros(2, dtype=[("IDENT", "i8"), ("MAG", "f8"), ("GAL_FILENAME", "S16"),
                             ("GAL_HDU", "i4"), ("PIXEL_SCALE", "f8"), ("NOISE_MEAN", "f8"),
                             ("NOISE_VARIANCE", "f8")])
    cat["IDENT"], cat["MAG"] = [101, 202], [22.0, 23.0]
    cat["GAL_FILENAME"], cat["GAL_HDU"] = "imgs.fits", [0, 1]
    cat["PIXEL_SCALE"], cat["NOISE_MEAN"], cat["NOISE_VARIANCE"] = 0.03, 7.0, 1.0
    fitsio.write(str(tmp_path / "cat.fits"), cat)
    table = cutouts.cutout_components(tmp_path, "cat.fits")
    assert table["INDEX"].tolist() == [0, 1] and table["IDENT"].tolist() == [101, 202]
    assert table["N_SOURCES"].tolist() == [1, 2]
    assert table["SECOND_FLUX_RATIO"][1] == pytest.approx(0.5, rel=0.1)
    assert table["SECOND_SEPARATION_ARCSEC"][1] == pytest.approx(12 * 0.03, abs=0.02)
    assert cutouts.multiple_cutouts(table).tolist() == [1]
    # only the galaxies asked for (those a set of tiles draws)
    one = cutouts.cutout_components(tmp_path, "cat.fits", indices=[1])
    assert one["INDEX"].tolist() == [1] and one["N_SOURCES"].tolist() == [2]
    assert len(cutouts.cutout_components(tmp_path, "cat.fits", indices=[])) == 0


def test_main_is_multiple_only_for_real_galaxies_listed():
    truth = np.zeros(5, dtype=[("KIND", "S10"), ("GAL_ID", "i8")])
    truth["KIND"] = [b"real", b"real", b"parametric", b"star", b"real"]
    truth["GAL_ID"] = [36, 5, 36, -1, 8]
    classes = np.zeros(6, dtype=TRUTH_CLASS_DTYPE)
    units = object_units(truth, tile_key=301)
    classes["GROUP"][:5] = units
    classes["MAIN_KIND"][:5] = truth["KIND"]
    # the sixth detection is spurious: GROUP 0, no kind
    assert cutouts.real_galaxy_indices(classes).tolist() == [36, 5, -1, -1, 8, -1]
    got = cutouts.main_is_multiple(classes, [36, 8])
    assert got.tolist() == [True, False, False, False, True, False]


def test_shared_cosmos_cutouts(cosmos_dir):
    table = cutouts.cutout_components(cosmos_dir)
    assert len(table) == 100
    assert cutouts.multiple_cutouts(table).tolist() == MULTIPLE_COSMOS_INDICES
    # index 36 (IDENT 38, F814W 21.26): a second source at 0.66" with 37 % of its flux
    row = table[36]
    assert row["IDENT"] == 38
    assert row["SECOND_FLUX_RATIO"] == pytest.approx(0.37, abs=0.03)
    assert row["SECOND_SEPARATION_ARCSEC"] == pytest.approx(0.66, abs=0.05)


def test_tiles_set_options_go_to_their_work_dir(monkeypatch):
    """``--tiles-set`` without a prefix applies to every ``--work-dir``, ``k:`` to the k-th
    only (0-based); a value holding a colon is not a prefix; a prefix beyond the work
    dirs stops the run with one line."""
    bench = load_bench("bench_cutout_multiples", monkeypatch)
    options = ["max_brightening_mag=0.5", "1:close_pair_fraction=0.05",
               "2:close_pair_fraction=0.3", "cosmos_dir=/data/c:osmos"]
    assert bench.options_of(options, 0, 3) == ["max_brightening_mag=0.5",
                                               "cosmos_dir=/data/c:osmos"]
    assert bench.options_of(options, 1, 3) == ["max_brightening_mag=0.5",
                                               "close_pair_fraction=0.05",
                                               "cosmos_dir=/data/c:osmos"]
    assert bench.options_of(options, 2, 3)[1] == "close_pair_fraction=0.3"
    with pytest.raises(SystemExit, match="--tiles-set 2:close_pair_fraction=0.3: there are 2 "
                                         "--work-dir"):
        bench.options_of(options, 0, 2)
