"""Step 2 of the stage: cut, fill and pad stamps (pure arrays, no I/O).

Input: a tile (2-D float array, 0-based ``[y, x]``), optionally a mask of bad pixels, and
0-based pixel positions. Output: padded stamps ``(n, size_pix + 2 pad_pix, same)`` ready for
the network and SEP, with the fraction of each stamp that fell off the tile or was masked.

Conventions: an integer position is a pixel centre; a stamp is centred on the nearest pixel,
``floor(x + 0.5)`` (so x.5 rounds up, never to even); its centre index is ``side // 2``.
Training stamps are noise-free, zero-padded, then Gaussian noise is added over the whole padded
stamp (``add_noise``). At inference the padding, off-tile and masked pixels are filled with
Gaussian noise of the tile's rms (``cut_stamps``), so both see noise of the same law there.
"""

import numpy as np

__all__ = ["nearest_pixel", "cut_stamps", "off_image", "off_image_any", "shift_stamps",
           "window_pixels", "fill_and_pad",
           "pad_stamps", "add_noise", "object_rng", "dataset_noise_seeds"]


def nearest_pixel(pos_pix):
    """Return the index of the pixel whose centre is nearest, ``floor(pos + 0.5)``.

    >>> nearest_pixel(np.array([2.49, 2.5, -0.5, 3.0])).tolist()
    [2, 3, 0, 3]
    """
    return np.floor(np.asarray(pos_pix, dtype=np.float64) + 0.5).astype(np.int64)


def object_rng(seed, index):
    """Return the generator of object ``index`` for a run seeded with ``seed``."""
    return np.random.default_rng([int(seed), int(index)])


def cut_stamps(image, x_pix, y_pix, size_pix, pad_pix=0, bad=None, fill_sigma=0.0,
               seed=0, first_index=0):
    """Cut padded stamps centred on positions, filling what is not valid sky with noise.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        The tile, float, background-subtracted, in ADU.
    x_pix, y_pix : array_like, shape (n,)
        0-based positions in pixels.
    size_pix : int
        Side of the stamp cut from the tile; odd.
    pad_pix : int
        Padding on each side; the returned stamps are ``size_pix + 2 * pad_pix`` wide.
    bad : ndarray of bool, shape (ny, nx), optional
        Pixels that must not reach the network (zero weight, non-finite, SExtractor's -1e30).
        Non-finite image pixels count as bad whether or not they are in ``bad``.
    fill_sigma : float
        Standard deviation of the Gaussian noise (ADU) that fills the padding, the pixels off
        the tile and the bad pixels.
    seed : int
        Run seed; object ``first_index + i`` draws its fill from ``object_rng(seed, ...)``,
        so a stamp does not depend on the batch it was cut in.
    first_index : int
        Index of the first position in the whole catalogue.

    Returns
    -------
    stamps : ndarray, float32, shape (n, side, side)
        ``side = size_pix + 2 * pad_pix``; the object's pixel is at ``[side // 2, side // 2]``.
    edge_frac : ndarray, float32, shape (n,)
        Fraction of the ``size_pix`` stamp lying outside the tile.
    mask_frac : ndarray, float32, shape (n,)
        Fraction of the ``size_pix`` stamp on the tile that is bad.
    """
    if size_pix % 2 != 1:
        raise ValueError(f"size_pix must be odd, got {size_pix}")
    xc, yc = nearest_pixel(x_pix), nearest_pixel(y_pix)
    cut = window_pixels(image, xc, yc, size_pix, 0.0)
    off = off_image(image.shape, xc, yc, size_pix)
    invalid = None if bad is None else window_pixels(bad, xc, yc, size_pix, False)
    return fill_and_pad(cut, off, invalid, pad_pix, fill_sigma, seed, first_index)


def off_image(shape, xc, yc, size_pix):
    """Return which pixels of the ``size_pix`` stamps centred on pixels ``(xc, yc)`` lie off an
    image of ``shape`` ``(ny, nx)``: bool ``(n, size_pix, size_pix)``."""
    half = size_pix // 2
    offsets = np.arange(size_pix) - half
    cols = np.asarray(xc, dtype=np.int64)[:, None] + offsets
    rows = np.asarray(yc, dtype=np.int64)[:, None] + offsets
    off_x = (cols < 0) | (cols >= shape[1])
    off_y = (rows < 0) | (rows >= shape[0])
    return off_y[:, :, None] | off_x[:, None, :]


def shift_stamps(stamps, dx_pix, dy_pix, fill=0):
    """Shift stamps by whole pixels: ``out[i, r, c] = stamps[i, r + dy_pix[i], c + dx_pix[i]]``.

    A stamp centred on pixel ``(xc, yc)`` becomes the stamp of the same size centred on
    ``(xc + dx_pix, yc + dy_pix)``. Returns ``(out, outside)``: ``outside`` (bool, same shape)
    marks the pixels that come from beyond the input stamp, which hold ``fill``.

    >>> out, outside = shift_stamps(np.arange(9).reshape(1, 3, 3), [1], [0])
    >>> out[0].tolist()
    [[1, 2, 0], [4, 5, 0], [7, 8, 0]]
    >>> outside[0, 0].tolist()
    [False, False, True]
    """
    stamps = np.asarray(stamps)
    _, ny, nx = stamps.shape
    out = np.full_like(stamps, fill)
    outside = np.ones(stamps.shape, dtype=bool)
    shifts = zip(np.asarray(dx_pix, np.int64), np.asarray(dy_pix, np.int64))
    for i, (dx, dy) in enumerate(shifts):
        # rows r with 0 <= r + dy < ny, columns c with 0 <= c + dx < nx
        r0, r1 = max(0, -dy), min(ny, ny - dy)
        c0, c1 = max(0, -dx), min(nx, nx - dx)
        if r1 > r0 and c1 > c0:
            out[i, r0:r1, c0:c1] = stamps[i, r0 + dy:r1 + dy, c0 + dx:c1 + dx]
            outside[i, r0:r1, c0:c1] = False
    return out, outside


def off_image_any(shape, xc, yc, size_pix):
    """Whether any pixel of the ``size_pix`` stamps centred on pixels ``(xc, yc)`` lies off an
    image of ``shape`` ``(ny, nx)`` (``off_image(...).any(axis=(1, 2))`` without the cube)."""
    half = size_pix // 2
    xc, yc = np.asarray(xc, np.int64), np.asarray(yc, np.int64)
    return (xc - half < 0) | (xc + half >= shape[1]) | (yc - half < 0) | (yc + half >= shape[0])


def window_pixels(image, xc, yc, size_pix, fill):
    """Return the ``size_pix`` windows of ``image`` centred on pixels ``(xc, yc)``, ``fill``
    off the image: ``(n, size_pix, size_pix)``, dtype of ``image``."""
    ny, nx = image.shape
    half = size_pix // 2
    out = np.full((len(xc), size_pix, size_pix), fill, dtype=image.dtype)
    for i, (x, y) in enumerate(zip(xc, yc)):
        x0, y0 = int(x) - half, int(y) - half
        # Overlap of the window [y0, y0 + size) x [x0, x0 + size) with the image.
        ty0, ty1 = max(y0, 0), min(y0 + size_pix, ny)
        tx0, tx1 = max(x0, 0), min(x0 + size_pix, nx)
        if ty1 > ty0 and tx1 > tx0:
            out[i, ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = image[ty0:ty1, tx0:tx1]
    return out


def fill_and_pad(cut, off, bad=None, pad_pix=0, fill_sigma=0.0, seed=0, first_index=0):
    """Pad stamps and fill what is not valid sky with noise: the end of ``cut_stamps``, and
    of the stage's stamps read from SExtractor's VIGNET.

    Parameters
    ----------
    cut : ndarray, shape (n, size_pix, size_pix)
        Background-subtracted stamps in ADU; values off the image or bad are ignored.
    off : ndarray of bool, same shape
        Pixels off the image.
    bad : ndarray of bool, same shape, optional
        Pixels on the image that must not reach the network. Non-finite pixels count as bad.
    pad_pix, fill_sigma, seed, first_index
        As ``cut_stamps``.

    Returns
    -------
    stamps, edge_frac, mask_frac
        As ``cut_stamps``.
    """
    n, size_pix = cut.shape[0], cut.shape[1]
    side = size_pix + 2 * pad_pix
    inner = slice(pad_pix, pad_pix + size_pix)
    invalid = ~np.isfinite(cut) & ~off
    if bad is not None:
        invalid |= bad & ~off
    fill = np.ones((n, side, side), dtype=bool)
    fill[:, inner, inner] = invalid | off
    stamps = np.zeros((n, side, side), dtype=np.float32)
    stamps[:, inner, inner] = np.where(fill[:, inner, inner], 0.0, cut)
    on_image = size_pix * size_pix - off.sum(axis=(1, 2))
    edge_frac = (1.0 - on_image / (size_pix * size_pix)).astype(np.float32)
    mask_frac = (invalid.sum(axis=(1, 2)) / np.maximum(on_image, 1)).astype(np.float32)
    if fill_sigma > 0:
        for i in range(n):
            noise = object_rng(seed, first_index + i).normal(0.0, fill_sigma, (side, side))
            stamps[i][fill[i]] = noise[fill[i]]
    return stamps, edge_frac, mask_frac


def pad_stamps(stamps, pad_pix):
    """Zero-pad stamps ``(n, s, s)`` by ``pad_pix`` on every side."""
    width = ((0, 0), (pad_pix, pad_pix), (pad_pix, pad_pix))
    return np.pad(np.asarray(stamps, dtype=np.float32), width)


def add_noise(stamps, sigma_adu, seeds):
    """Return stamps plus Gaussian noise, each stamp drawn from its own seed.

    Parameters
    ----------
    stamps : ndarray, shape (n, ny, nx)
        Noise-free stamps in ADU.
    sigma_adu : float
        Noise standard deviation, ADU.
    seeds : sequence of int or of sequences of int, length n
        Seed of each stamp (anything ``numpy.random.default_rng`` takes), so any subset of a
        data set gets the same noise as the whole.

    Returns
    -------
    ndarray, float32, same shape
    """
    out = np.array(stamps, dtype=np.float32, copy=True)
    for i, seed in enumerate(seeds):
        out[i] += np.random.default_rng(seed).normal(0.0, sigma_adu, out.shape[1:])
    return out


def dataset_noise_seeds(seed, sigma_adu, realisation, indices):
    """Return the noise seed of each stamp of a simulated data set.

    Stamp ``i`` of a data set with seed ``seed``, at noise ``sigma_adu`` and realisation
    ``realisation`` gets ``[seed, round(1000 * sigma_adu), realisation, i]``, so every
    (sigma, realisation) pair is an independent noise set that any subset reproduces.
    """
    key = int(round(1000 * float(sigma_adu)))
    return [[int(seed), key, int(realisation), int(i)] for i in indices]

