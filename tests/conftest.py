"""Shared fixtures: a small synthetic tile with an LDAC catalogue, a fake classifier, and the
locations of optional external inputs (COSMOS samples, the real frame, source-extractor,
psfex, fitsverify)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TILE_SHAPE = (100, 100)
SOURCES_XY = [(20.0, 22.0), (75.0, 75.0), (78.0, 76.5)]
"""0-based (x, y) of the synthetic tile's Gaussian sources; the last two form a close pair
(3.4 px), the first is isolated (no other source within its 51x51 stamp)."""


def _missing(reason):
    """Skip a test whose external input is absent; under CI (CI=true) that is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI)")
    pytest.skip(reason)


MULTIPLE_COSMOS_INDICES = [8, 9, 10, 15, 19, 28, 36, 39, 46, 48, 50]
"""Real galaxies (indices into ../shared/cosmos' 26_extension sample) whose HST cut-out holds
a second source with >= 10 % of the main flux: found with a separate script calling SEP
directly (3 sigma, 10 pixels, SExtractor's deblending), all with ratios >= 0.22."""


def load_bench(name, monkeypatch):
    """``bench/<name>.py`` as a module, loaded as ``python bench/<name>.py`` runs it (its
    folder first on ``sys.path``, for ``benchlib``)."""
    import importlib.util

    bench_dir = REPO / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))
    spec = importlib.util.spec_from_file_location(name, bench_dir / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.fixture(scope="session")
def cosmos_dir():
    """The COSMOS samples folder: $BH_STAGE_COSMOS_DIR, default ../shared/cosmos."""
    path = Path(os.environ.get("BH_STAGE_COSMOS_DIR", REPO.parent / "shared" / "cosmos"))
    if not (path / "real_galaxy_catalog_23.5_example.fits").is_file():
        _missing(f"COSMOS samples not found in {path}; set BH_STAGE_COSMOS_DIR")
    return path


def _tool(name):
    """Path of a Debian tool's command (package of the same name)."""
    exe = shutil.which(name)
    if exe is None:
        _missing(f"{name} not installed (apt-get install {name})")
    return exe


@pytest.fixture(scope="session")
def sextractor():
    """Path of the source-extractor command."""
    return _tool("source-extractor")


@pytest.fixture(scope="session")
def psfex():
    """Path of the psfex command."""
    return _tool("psfex")


@pytest.fixture(scope="session")
def fitsverify():
    """Path of the fitsverify command."""
    return _tool("fitsverify")


@pytest.fixture(scope="session")
def real_frame():
    """The real ESO NTT frame of ../shared/realdata (or $BH_STAGE_REALDATA_DIR), read in
    place: it is never copied into the repository."""
    folder = Path(os.environ.get("BH_STAGE_REALDATA_DIR", REPO.parent / "shared" / "realdata"))
    path = folder / "ntt_emmi_r_1992.fits"
    if not path.is_file():
        _missing(f"real frame not found: {path}; set BH_STAGE_REALDATA_DIR")
    return path


def children_of(pid):
    """Pids whose parent is ``pid`` (read from /proc)."""
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines()
                          if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.append(int(status.parent.name))
    return out


def alive(pid):
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def alive_after(pids, wait_s=5.0):
    """Those of ``pids`` still alive ``wait_s`` after the call, or [] as soon as none is: a
    killed process needs a moment to die (the kernel kills a stage's children when it ends,
    bh_stage.children)."""
    for _ in range(int(wait_s * 20)):
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


SIGINT_DEFAULT = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
"""First line of a signalled child's code: Ctrl-C raises KeyboardInterrupt even where the
tests run from a shell's background job, which starts commands with SIGINT ignored (Python
then installs no handler)."""


def signal_when_ready(code, argv, signum, ready, cwd=None, env=None, wait_s=60):
    """Run ``python -c code *argv``, wait (up to ``wait_s``) until ``ready(children)`` is
    true of its live child processes, send it ``signum`` and wait for its end (up to 30 s).

    Returns ``(exit code, stdout, stderr, the children seen when signalled)``.
    """
    proc = subprocess.Popen([sys.executable, "-c", SIGINT_DEFAULT + code, *argv], cwd=cwd,
                            env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        children = []
        for _ in range(int(wait_s * 10)):
            children = [pid for pid in children_of(proc.pid) if alive(pid)]
            if ready(children) or proc.poll() is not None:
                break
            time.sleep(0.1)
        if not ready(children):
            proc.kill()
            raise AssertionError(f"not ready after {wait_s} s: {proc.communicate(timeout=30)}")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    return proc.returncode, out, err, children


def gaussian_image(shape, sources_xy, flux_adu=4000.0, sigma_pix=1.8, noise_adu=5.0, seed=0):
    """A noisy image with round Gaussian sources at 0-based (x, y)."""
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    image = np.random.default_rng(seed).normal(0.0, noise_adu, shape)
    for x, y in sources_xy:
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        image += flux_adu * np.exp(-r2 / (2 * sigma_pix**2)) / (2 * np.pi * sigma_pix**2)
    return image.astype(np.float32)


def write_ldac(path, x_pix, y_pix, vignet=None, image_shape=None, vignet_centre=None):
    """Write a FITS_LDAC catalogue like SExtractor's: LDAC_IMHEAD and LDAC_OBJECTS with
    1-based XWIN_IMAGE/YWIN_IMAGE, units, comments, TDISP and a VIGNET column with TDIM.

    ``vignet`` (n, s, s): the VIGNET column, with X_IMAGE/Y_IMAGE equal to XWIN/YWIN added
    (default: a 3x3 ``arange`` and no X_IMAGE); ``vignet_centre`` (x_pix, y_pix), 0-based,
    sets X_IMAGE/Y_IMAGE apart from XWIN/YWIN. ``image_shape`` (ny, nx): NAXIS2/NAXIS1
    cards in LDAC_IMHEAD."""
    import fitsio

    n = len(x_pix)
    cell = (3, 3) if vignet is None else np.shape(vignet)[1:]
    centre = [] if vignet is None else [("X_IMAGE", ">f8"), ("Y_IMAGE", ">f8")]
    photometry = ["FLUX_RADIUS", "A_IMAGE", "B_IMAGE", "FLUX_AUTO", "FLUXERR_AUTO", "MAG_AUTO",
                  "CLASS_STAR"]  # what the tile head reads, with FLAGS
    objects = np.zeros(n, dtype=[("NUMBER", ">i4"), ("XWIN_IMAGE", ">f8"),
                                 ("YWIN_IMAGE", ">f8"), ("FLAGS", ">i2"),
                                 ("VIGNET", ">f4", cell)] + [(c, ">f4") for c in photometry]
                       + centre)
    objects["NUMBER"] = np.arange(1, n + 1)
    objects["XWIN_IMAGE"] = np.asarray(x_pix) + 1.0  # SExtractor is 1-based
    objects["YWIN_IMAGE"] = np.asarray(y_pix) + 1.0
    objects["VIGNET"] = np.arange(9, dtype=np.float32).reshape(3, 3) if vignet is None \
        else vignet
    if vignet is not None:
        objects["X_IMAGE"], objects["Y_IMAGE"] = objects["XWIN_IMAGE"], objects["YWIN_IMAGE"]
    if vignet_centre is not None:
        objects["X_IMAGE"] = np.asarray(vignet_centre[0]) + 1.0
        objects["Y_IMAGE"] = np.asarray(vignet_centre[1]) + 1.0
    for column, value in zip(photometry, (1.8, 1.9, 1.7, 4000.0, 40.0, 21.0, 0.5)):
        objects[column] = value
    cards = [b"SIMPLE  =                    T", b"GAIN    = 1.0"]
    if image_shape is not None:
        cards += [b"NAXIS1  = %20d" % image_shape[1], b"NAXIS2  = %20d" % image_shape[0]]
    imhead = np.zeros(1, dtype=[("Field Header Card", "S80", (len(cards) + 1,))])
    imhead["Field Header Card"][0] = cards + [b"END"]
    with fitsio.FITS(str(path), "rw", clobber=True) as fits:
        fits.write(None)
        fits.write(imhead, extname="LDAC_IMHEAD")
        fits.write(objects, extname="LDAC_OBJECTS",
                   units=["", "pixel", "pixel", "", "count", "pixel", "pixel", "pixel", "count",
                          "count", "mag", ""] + ["pixel"] * len(centre))
        hdu = fits[-1]
        hdu.write_key("TTYPE2", "XWIN_IMAGE", comment="Windowed position estimate along x")
        hdu.write_key("TDISP2", "F11.4")


@pytest.fixture
def small_tile(tmp_path):
    """A 100x100 tile with 3 Gaussian sources, its weight map and a 3-row LDAC catalogue."""
    import fitsio

    tile = tmp_path / "tile.fits"
    fitsio.write(str(tile), gaussian_image(TILE_SHAPE, SOURCES_XY), clobber=True)
    weight = tmp_path / "tile.weight.fits"
    fitsio.write(str(weight), np.ones(TILE_SHAPE, dtype=np.float32), clobber=True)
    x, y = np.array(SOURCES_XY).T
    write_ldac(tmp_path / "tile.cat", x, y)
    return tmp_path


class FakeClassifier:
    """Stands in for ``model.Classifier`` without TensorFlow: P(blend) grows with the number
    of pixels above 40 ADU (8 sigma) outside the central 7x7 box."""

    def __init__(self, head, precision="f32", batch_size=256, **_):
        self.head_path, self.precision = Path(head), precision
        self.metadata = {"size_pix": 51, "pad_pix": 7, "noise_sigma_adu": 5.0,
                         "weights_sha256": "0" * 64, "backbone": "fake"}
        self.blend_threshold = 0.5
        self.hybrid_threshold = 0.9
        self.calibration = (1.0, 0.0)
        self.calls = 0

    def predict_proba(self, stamps, rms_adu=None):
        assert rms_adu is None or rms_adu > 0
        self.calls += 1
        stamps = np.array(stamps, dtype=np.float32)
        c = stamps.shape[-1] // 2
        stamps[:, c - 3:c + 4, c - 3:c + 4] = 0
        return np.clip((stamps > 40).sum(axis=(1, 2)) / 5.0, 0, 1).astype(np.float32)


class FakeTileHead:
    """Stands in for ``tilehead.TileHead`` without TensorFlow and without catalogue columns:
    P(unrecognised blend) grows with the pixels above 40 ADU outside the central 7x7 box but
    inside the central 21x21 (a companion within ~10 px)."""

    catalogue_columns = ()
    stamp_features = False
    blend_threshold = 0.5

    def __init__(self, path, precision="f32"):
        # 'auto' (the default) runs a head with no 8-bit network, as this one, in f32
        self.path, self.precision = Path(path), "f32" if precision == "auto" else precision
        self.metadata = {"target": "unrecognised_blend", "weights_sha256": "1" * 64,
                         "size_pix": 51, "pad_pix": 7}

    def build(self):
        """No network to build (``TileHead.build`` imports TensorFlow)."""
        return self

    def predict_proba(self, stamps, rms_adu, features):
        assert features.shape == (len(stamps), 0) and rms_adu > 0
        c = stamps.shape[-1] // 2
        inner = np.array(stamps[:, c - 10:c + 11, c - 10:c + 11], dtype=np.float64)
        inner[:, 7:14, 7:14] = 0
        return np.clip((inner > 40).sum(axis=(1, 2)) / 5.0, 0.01, 0.99)


class FakeStampHead(FakeTileHead):
    """A position-only ``FakeTileHead`` (``stamp_features`` True) that reads the stamp's
    features and whose P varies smoothly with the shape of the central 21x21 pixels, so the
    four sheared images of a stamp get four different values: ``sigmoid(-1 + 30 e1 + 20 e2 +
    0.5 FOUND)`` with ``e`` the ellipticity of the positive pixels' second moments."""

    stamp_features = True

    def __init__(self, path, precision="f32"):
        from bh_stage.features import FEATURE_NAMES

        super().__init__(path, precision)
        self.feature_names = FEATURE_NAMES

    def predict_proba(self, stamps, rms_adu, features):
        assert features.shape == (len(stamps), len(self.feature_names)) and rms_adu > 0
        c = stamps.shape[-1] // 2
        w = np.clip(np.asarray(stamps[:, c - 10:c + 11, c - 10:c + 11], np.float64), 0, None)
        t = np.arange(-10, 11, dtype=np.float64)
        flux = w.sum(axis=(1, 2))
        ixx = (w * t[None, None, :] ** 2).sum(axis=(1, 2))
        iyy = (w * t[None, :, None] ** 2).sum(axis=(1, 2))
        ixy = (w * t[None, :, None] * t[None, None, :]).sum(axis=(1, 2))
        e1, e2 = (ixx - iyy) / (ixx + iyy), 2 * ixy / (ixx + iyy)
        assert (flux > 0).all()
        return 1 / (1 + np.exp(-(-1 + 30 * e1 + 20 * e2 + 0.5 * features[:, 0])))


def write_psfex(path, components, degree, zero_1based=(0.0, 0.0), scale_pix=(1.0, 1.0),
                sample_pix=1.0, context=("X_IMAGE", "Y_IMAGE")):
    """Write a PSFEx-like ``.psf`` file: extension PSF_DATA, one row, column PSF_MASK
    ``(n_terms, ny, nx)``, and PSFEx 3.21's header keys (POLNAXIS, POLGRP*, POLNAME*,
    POLZERO*, POLSCAL*, POLNGRP, POLDEG1, PSF_SAMP, PSFNAXIS, PSFAXIS*); ``degree`` None:
    POLNAXIS 0 (a constant model)."""
    import fitsio

    components = np.asarray(components, dtype=np.float32)
    data = np.zeros(1, dtype=[("PSF_MASK", ">f4", components.shape)])
    data["PSF_MASK"][0] = components
    keys = [("LOADED", 100), ("ACCEPTED", 90), ("CHI2", 1.0)]
    if degree is None:
        keys.append(("POLNAXIS", 0))
    else:
        keys += [("POLNAXIS", 2), ("POLGRP1", 1), ("POLNAME1", context[0]),
                 ("POLZERO1", zero_1based[0]), ("POLSCAL1", scale_pix[0]), ("POLGRP2", 1),
                 ("POLNAME2", context[1]), ("POLZERO2", zero_1based[1]),
                 ("POLSCAL2", scale_pix[1]), ("POLNGRP", 1), ("POLDEG1", degree)]
    keys += [("PSF_FWHM", 3.0), ("PSF_SAMP", sample_pix), ("PSFNAXIS", 3),
             ("PSFAXIS1", components.shape[2]), ("PSFAXIS2", components.shape[1]),
             ("PSFAXIS3", components.shape[0])]
    with fitsio.FITS(str(path), "rw", clobber=True) as fits:
        fits.write(None)
        fits.write(data, extname="PSF_DATA", header=[{"name": k, "value": v} for k, v in keys])
    return path


@pytest.fixture
def fake_classifier(monkeypatch, tmp_path):
    """Patch ``bh_stage.model`` and ``bh_stage.tilehead`` so the stage scores with
    ``FakeClassifier`` (BH_PAPER_PROB) and ``FakeTileHead`` (BLEND_PROB)."""
    from bh_stage import heads, model, tilehead

    monkeypatch.setattr(tilehead, "tile_head_path", lambda name: tmp_path / "fake_tile.json")
    monkeypatch.setattr(tilehead, "load_tile_head", FakeTileHead)
    made = []

    def load(head, **kwargs):
        made.append(FakeClassifier(head, **kwargs))
        return made[-1]

    monkeypatch.setattr(heads, "head_path", lambda name, **_: tmp_path / "fake_head.json")
    monkeypatch.setattr(model, "load_classifier", load)
    return made


@pytest.fixture
def fake_stamp_head(fake_classifier, monkeypatch):
    """``fake_classifier`` with ``FakeStampHead`` as the tile head (a position-only head)."""
    from bh_stage import tilehead

    monkeypatch.setattr(tilehead, "load_tile_head", FakeStampHead)
    return fake_classifier


def small_tile_set(work_dir, cosmos_dir, size_pix, train, valid, test):
    """``--set`` arguments of a small simulated tile set (40 % of galaxies in pairs, one
    worker) for the train-tile and evaluate-tile tests; seeds are lists."""
    keys = [f"tiles.work_dir={work_dir}", f"tiles.cosmos_dir={cosmos_dir}",
            f"tiles.size_pix={size_pix}", f"tiles.train_seeds={list(train)}",
            f"tiles.valid_seeds={list(valid)}", f"tiles.test_seeds={list(test)}",
            "tiles.close_pair_fraction=0.4", "tiles.train_close_pair_fraction=0.4",
            "tiles.n_workers=1"]
    return ["--set=" + key.replace(" ", "") for key in keys]
