"""Tests of bh_stage.study.tiletruth on hand-made segmentation maps and 9x9 Gaussian objects."""

import numpy as np
import pytest

from bh_stage.study.simulate import TILE_TRUTH_DTYPE
from bh_stage.study.tiletruth import (SPURIOUS_UNIT, TRUTH_CLASS_DTYPE, UNIT_STRIDE,
                                     classify_detections, object_units, segment_fluxes)

D = 9
"""Side of every object's noise-free image, pixels; the object sits at its centre pixel 4."""


def gauss(flux_adu, sigma_pix=1.5):
    """A 9x9 Gaussian centred on pixel (4, 4) that sums to ``flux_adu``."""
    yy, xx = np.mgrid[:D, :D]
    g = np.exp(-((xx - D // 2)**2 + (yy - D // 2)**2) / (2 * sigma_pix**2))
    return flux_adu * g / g.sum()


def make_objects(corners, fluxes, kinds=None, gal_ids=None):
    """Truth table, corners and images of objects whose centres are corner + 4."""
    n = len(corners)
    corners = np.array(corners, dtype=np.int64).reshape(n, 2)
    truth = np.zeros(n, dtype=TILE_TRUTH_DTYPE)
    truth["ID"] = np.arange(1, n + 1)
    truth["X_PIX0"], truth["Y_PIX0"] = corners[:, 0] + D // 2, corners[:, 1] + D // 2
    truth["MAG"] = 20.0 + np.arange(n)
    truth["SNR"] = 100.0 + np.arange(n)
    truth["GAL_ID"] = np.arange(n) if gal_ids is None else gal_ids
    truth["KIND"] = [b"mixed"] * n if kinds is None else kinds
    images = np.array([gauss(f) for f in fluxes])
    return truth, corners, images


def as_dict(obj, label, flux):
    return {(int(j), int(s)): f for j, s, f in zip(obj, label, flux)}


# --- segment_fluxes ---------------------------------------------------------------------

def test_segment_fluxes_split_by_hand():
    seg = np.zeros((40, 40), dtype=np.int64)
    seg[0:20, 0:20] = 1
    seg[0:20, 20:40] = 2
    seg[25:35, 5:15] = 3
    #                 whole in 1  across 1|2  rows in 1, sky, 3   off the map's corner
    corners = np.array([(5, 5), (16, 5), (8, 18), (36, 36)])
    images = np.array([gauss(f) for f in (100.0, 200.0, 300.0, 400.0)])
    obj, label, flux = segment_fluxes(seg, corners, images)
    assert obj.dtype == np.int64 and label.dtype == np.int64
    img1, img2, img3 = images[1], images[2], images[3]
    expected = {
        (0, 1): 100.0,
        (1, 1): img1[:, :4].sum(), (1, 2): img1[:, 4:].sum(),        # columns 16-19 | 20-24
        (2, 1): img2[:2, :].sum(),                                    # rows 18-19
        (2, 3): img2[7:, :7].sum(),                                   # rows 25-26, cols 8-14
        (2, 0): img2[2:7, :].sum() + img2[7:, 7:].sum(),              # the rest is sky
        (3, 0): img3[:4, :4].sum(),                                   # pixels 36-39 only
    }
    got = as_dict(obj, label, flux)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    # an object's pieces inside the map add up to its image
    assert sum(v for (j, _), v in got.items() if j == 2) == pytest.approx(300.0, rel=1e-12)


def test_segment_fluxes_object_entirely_off_the_map():
    seg = np.ones((10, 10), dtype=np.int64)
    obj, label, flux = segment_fluxes(seg, np.array([[20, 20], [-9, 0]]),
                                      np.array([gauss(1.0), gauss(1.0)]))
    assert obj.size == 0 and label.size == 0 and flux.size == 0


# --- unrecognised blends ----------------------------------------------------------------

def merged_scene():
    """Segment 1 holds A (main, 1000 ADU), B (300) and E (250) with no segment of their own,
    faint C (50) and the left 3 columns of D (5000 ADU, 766 in segment 1), whose home is
    segment 2; segment 3 holds no object."""
    seg = np.zeros((40, 40), dtype=np.int64)
    seg[0:20, 0:20] = 1
    seg[0:20, 20:40] = 2
    seg[30:35, 30:35] = 3
    #            A        B        E        C         D
    corners = [(2, 2), (7, 8), (2, 10), (10, 2), (17, 4)]
    truth, corners, images = make_objects(corners, [1000.0, 300.0, 250.0, 50.0, 5000.0])
    return seg, truth, corners, images


def test_merged_companions_make_an_unrecognised_blend():
    seg, truth, corners, images = merged_scene()
    d_in_1 = images[4][:, :3].sum()
    assert 100.0 < d_in_1 < 1000.0  # D: >= 10 % of A in segment 1, but at home in 2
    out = classify_detections(seg, np.array([1, 2, 3]), truth, corners, images)
    assert out.dtype == TRUTH_CLASS_DTYPE
    np.testing.assert_array_equal(out["NUMBER"], [1, 2, 3])
    a, d, spurious = out
    assert a["MAIN_ID"] == 1 and a["MAIN_KIND"] == b"mixed"
    assert a["MAIN_MAG"] == 20.0 and a["MAIN_SNR"] == 100.0
    # B and E are merged (>= 10 %, no detection of their own); C is faint, D has its own
    assert a["UNRECOGNISED"] == 1 and a["N_MERGED"] == 2
    assert a["COMP_FLUX_RATIO"] == pytest.approx(0.3, rel=1e-12)  # the brightest, B
    assert a["COMP_SEPARATION_PIX"] == pytest.approx(np.hypot(5.0, 6.0), rel=1e-12)
    assert d["MAIN_ID"] == 5 and d["UNRECOGNISED"] == 0 and d["N_MERGED"] == 0
    assert np.isnan(d["COMP_FLUX_RATIO"]) and np.isnan(d["COMP_SEPARATION_PIX"])
    # segment 3 holds no object flux: spurious
    assert spurious["MAIN_ID"] == -1 and spurious["GROUP"] == SPURIOUS_UNIT == 0
    assert spurious["MAIN_KIND"] == b"" and spurious["N_MERGED"] == 0
    for field in ("UNRECOGNISED", "CLOSE_COMPANION", "UNDETECTED_CLOSE", "PAPER_BLEND",
                  "ISOLATED"):
        assert spurious[field] == 0, field
    for field in ("MAIN_MAG", "MAIN_SNR", "COMP_FLUX_RATIO", "COMP_SEPARATION_PIX",
                  "NEAREST_TRUE_PIX"):
        assert np.isnan(spurious[field]), field


def test_companion_with_its_own_detection_is_not_merged():
    """Give B, then E, segments of their own: a companion is merged only into the segment
    holding most of its flux."""
    seg, truth, corners, images = merged_scene()
    seg[8:17, 7:16] = 4   # B's whole footprint (and corners of A, C and E)
    seg[17:19, 2:11] = 5  # E's last two rows
    # E keeps 61 % of its flux in segment 1 (35 % in 4, 4 % in 5): still merged there
    out = classify_detections(seg, np.array([1, 4, 5]), truth, corners, images)
    assert out["N_MERGED"][0] == 1 and out["UNRECOGNISED"][0] == 1
    f_e_in_1 = images[2][:7, :5].sum()          # rows 10-16, columns 2-6 of E
    f_a_in_1 = 1000.0 - images[0][6:, 5:].sum()  # all of A but its corner under segment 4
    assert out["COMP_FLUX_RATIO"][0] == pytest.approx(f_e_in_1 / f_a_in_1, rel=1e-12)
    assert out["COMP_SEPARATION_PIX"][0] == pytest.approx(8.0, rel=1e-12)  # A to E
    # B is segment 4's main object; A and E have >= 10 % of B there but live elsewhere
    assert out["MAIN_ID"][1] == 2 and out["N_MERGED"][1] == 0
    assert out["UNRECOGNISED"][1] == 0
    seg[10:17, 2:7] = 5  # now most of E lies in segment 5
    out = classify_detections(seg, np.array([1, 4, 5]), truth, corners, images)
    assert out["N_MERGED"][0] == 0 and out["UNRECOGNISED"][0] == 0


def test_companion_mostly_on_the_sky_is_merged():
    """The sky is no detection: a companion with 15 % of its flux in segment 1 and the rest
    on the sky is merged into segment 1."""
    seg = np.zeros((30, 30), dtype=np.int64)
    seg[:, 0:15] = 1
    truth, corners, images = make_objects([(3, 5), (12, 5)], [1000.0, 1000.0])
    row = classify_detections(seg, np.array([1]), truth, corners, images)[0]
    assert row["UNRECOGNISED"] == 1 and row["N_MERGED"] == 1
    assert row["COMP_FLUX_RATIO"] == pytest.approx(images[1][:, :3].sum() / 1000.0, rel=1e-12)
    assert row["COMP_SEPARATION_PIX"] == pytest.approx(9.0, rel=1e-12)
    assert row["CLOSE_COMPANION"] == 1 and row["UNDETECTED_CLOSE"] == 1


@pytest.mark.parametrize("ratio, merged", [(0.08, 0), (0.12, 1)])
def test_min_flux_ratio_boundary(ratio, merged):
    seg = np.zeros((30, 30), dtype=np.int64)
    seg[0:30, 0:30] = 1
    truth, corners, images = make_objects([(5, 5), (12, 5)], [1000.0, 1000.0 * ratio])
    row = classify_detections(seg, np.array([1]), truth, corners, images)[0]
    assert row["UNRECOGNISED"] == merged and row["N_MERGED"] == merged
    if merged:
        assert row["COMP_FLUX_RATIO"] == pytest.approx(ratio, rel=1e-12)
        assert row["COMP_SEPARATION_PIX"] == pytest.approx(7.0, rel=1e-12)
    else:
        assert np.isnan(row["COMP_FLUX_RATIO"])


# --- neighbourhood classes --------------------------------------------------------------

def pair_scene(dx, dy, neighbour_flux=1000.0, neighbour_segment=True):
    """Main object at (50, 50) in segment 1 and one neighbour at (50 + dx, 50 + dy), in
    segment 2 if ``neighbour_segment``; returns the main detection's truth row."""
    seg = np.zeros((100, 100), dtype=np.int64)
    corners = [(46, 46), (46 + dx, 46 + dy)]
    seg[46:55, 46:55] = 1
    if neighbour_segment:
        seg[46 + dy:55 + dy, 46 + dx:55 + dx] = 2
    truth, corners, images = make_objects(corners, [1000.0, neighbour_flux])
    return classify_detections(seg, np.array([1]), truth, corners, images)[0]


@pytest.mark.parametrize("dx, dy, close, paper, isolated", [
    (9, 0, 1, 1, 0),     # close: distance < 10
    (10, 0, 0, 1, 0),    # 10 is not close
    (0, -25, 0, 1, 0),   # |dy| = 25: inside the 51x51 stamp
    (25, 25, 0, 1, 0),   # corner of the stamp; distance 35.4 < 36, not isolated
    (26, 0, 0, 0, 0),    # outside the stamp, still within 36
    (20, -26, 0, 0, 0),  # |dy| = 26: outside the stamp; distance 32.8
    (25, -26, 0, 0, 1),  # distance 36.07: isolated
    (35, 0, 0, 0, 0),
    (36, 0, 0, 0, 1),    # isolated: no neighbour within 36
    (-30, 30, 0, 0, 1),  # distance 42.4
])
def test_neighbourhood_classes_at_their_boundaries(dx, dy, close, paper, isolated):
    row = pair_scene(dx, dy)
    assert (row["CLOSE_COMPANION"], row["PAPER_BLEND"], row["ISOLATED"]) == (
        close, paper, isolated)
    assert row["NEAREST_TRUE_PIX"] == pytest.approx(np.hypot(dx, dy), rel=1e-12)
    assert row["UNDETECTED_CLOSE"] == 0  # the neighbour has its own detection
    assert row["UNRECOGNISED"] == 0


def test_undetected_close_neighbour():
    row = pair_scene(9, 0, neighbour_segment=False)
    assert row["CLOSE_COMPANION"] == 1 and row["UNDETECTED_CLOSE"] == 1
    # outside segment 1 and with no segment: not merged, the detection is not unrecognised
    assert row["UNRECOGNISED"] == 0


def test_faint_neighbour_is_ignored():
    """A neighbour below 10 % of the main object's total flux is no neighbour at all."""
    row = pair_scene(5, 0, neighbour_flux=80.0, neighbour_segment=False)
    assert (row["CLOSE_COMPANION"], row["PAPER_BLEND"], row["ISOLATED"]) == (0, 0, 1)
    assert np.isnan(row["NEAREST_TRUE_PIX"])
    row = pair_scene(5, 0, neighbour_flux=120.0, neighbour_segment=False)
    assert (row["CLOSE_COMPANION"], row["PAPER_BLEND"], row["ISOLATED"]) == (1, 1, 0)


# --- bootstrap groups -------------------------------------------------------------------

def test_group_shared_by_one_galaxy_and_distinct_for_stars():
    seg = np.zeros((20, 100), dtype=np.int64)
    corners = [(2 + 20 * k, 5) for k in range(5)]
    for k in range(5):
        seg[5:14, 2 + 20 * k:11 + 20 * k] = k + 1
    kinds = [b"mixed", b"mixed", b"star", b"star", b"real"]
    gal_ids = [7, 7, -1, -1, 7]
    truth, corners, images = make_objects(corners, [1000.0] * 5, kinds, gal_ids)
    out = classify_detections(seg, np.arange(1, 6), truth, corners, images)
    np.testing.assert_array_equal(out["MAIN_ID"], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(out["MAIN_KIND"], kinds)
    g = out["GROUP"]
    assert g[0] == g[1]                         # same COSMOS galaxy drawn twice
    assert len({g[0], g[2], g[3], g[4]}) == 4   # stars alone; same GAL_ID, other kind
    assert g[0] > 0 and g[4] > 0 and g[2] < 0 and g[3] < 0  # galaxies > 0, stars < 0


def test_two_tiles_sharing_a_galaxy_give_it_one_unit():
    """Regression (intervals too narrow, issue 21): groups were numbered per tile by order of
    appearance, so one galaxy on two tiles was two units and unit k a different galaxy on
    each tile. Now a galaxy (kind, COSMOS row) is the same unit on every tile, in any order;
    stars are distinct units across tiles even at the same row; spurious detections are 0."""
    seg = np.zeros((20, 100), dtype=np.int64)
    corners = [(2 + 20 * k, 5) for k in range(4)]
    for k in range(4):
        seg[5:14, 2 + 20 * k:11 + 20 * k] = k + 1
    kinds_a = [b"real", b"parametric", b"star", b"real"]
    ids_a = [12, 12, -1, 40]
    kinds_b = [b"real", b"real", b"star", b"parametric"]   # other order, other neighbours
    ids_b = [40, 12, -1, 7]
    tables = []
    for key, kinds, ids in ((301, kinds_a, ids_a), (302, kinds_b, ids_b)):
        truth, c, images = make_objects(corners, [1000.0] * 4, kinds, ids)
        tables.append(classify_detections(seg, np.arange(1, 5), truth, c, images,
                                          tile_key=key)["GROUP"])
    a, b = tables
    assert a[0] == b[1]      # real 12 on both tiles
    assert a[3] == b[0]      # real 40 on both tiles
    assert a[1] != a[0]      # parametric 12 is another galaxy than real 12
    assert a[2] < 0 and b[2] < 0 and a[2] != b[2]   # the two stars at row 3
    assert len({*a, *b}) == 6  # real 12, real 40, parametric 12, parametric 7, 2 stars


def test_object_units_by_hand():
    """Units worked out from the rule: kind code * UNIT_STRIDE + GAL_ID for galaxies,
    -(tile * UNIT_STRIDE + row + 1) for stars."""
    import zlib

    truth = np.zeros(3, dtype=TILE_TRUTH_DTYPE)
    truth["KIND"] = [b"real", b"star", b"real"]
    truth["GAL_ID"] = [5, -1, 6]
    code = zlib.crc32(b"real") % 2**20 + 1
    np.testing.assert_array_equal(object_units(truth, 7), [code * UNIT_STRIDE + 5,
                                                           -(7 * UNIT_STRIDE + 2),
                                                           code * UNIT_STRIDE + 6])
    truth["GAL_ID"][0] = UNIT_STRIDE
    with pytest.raises(ValueError, match="collide"):
        object_units(truth, 0)


def test_tile_roles_draw_their_half_of_the_galaxies():
    """Training and validation tiles draw parametric galaxies and the training half of the
    real ones; test tiles only the test half of the real ones (issue 21: no test that
    checked this mapping)."""
    from bh_stage.config import TileSetConfig, config_from_dict
    from bh_stage.study.tileset import simulate_config

    tiles = config_from_dict(TileSetConfig, {})
    for role in ("train", "valid"):
        cfg = simulate_config(tiles, role, 1)
        assert cfg.tile.galaxy_kind == "mixed" and cfg.mixed_real_half == "train"
    cfg = simulate_config(tiles, "test", 1)
    assert cfg.tile.galaxy_kind == "real" and cfg.real_half == "test"


def test_drawn_galaxies_are_each_their_own_unit():
    """Galaxies drawn anew per object (KIND b'sersicdraw', GAL_ID = tile row) get
    2**21 * UNIT_STRIDE + tile * UNIT_STRIDE + row: distinct within a tile and across tiles,
    the same on a twin of the tile (same seed), above every kind-coded unit (issue 21)."""
    import zlib

    truth = np.zeros(4, dtype=TILE_TRUTH_DTYPE)
    truth["KIND"] = [b"sersicdraw", b"sersicdraw", b"parametric", b"star"]
    truth["GAL_ID"] = [0, 1, 0, -1]
    base = 2**21 * 10**7
    par = (zlib.crc32(b"parametric") % 2**20 + 1) * 10**7
    np.testing.assert_array_equal(object_units(truth, 7), [base + 7 * 10**7,
                                                           base + 7 * 10**7 + 1, par,
                                                           -(7 * 10**7 + 4)])
    np.testing.assert_array_equal(object_units(truth, 7), object_units(truth.copy(), 7))
    other = object_units(truth, 8)
    assert not set(other[:2]) & set(object_units(truth, 7)[:2])
    # every kind-coded unit (code <= 2**20 + 1, GAL_ID < UNIT_STRIDE) lies below the base
    assert (2**20 + 2) * UNIT_STRIDE <= base
    as_read = {"KIND": np.array(["sersicdraw", "parametric"]), "GAL_ID": np.array([3, 3])}
    np.testing.assert_array_equal(object_units(as_read, 7), [base + 7 * 10**7 + 3, par + 3])
