"""Step 4 of the stage: SEP's blend verdict on each stamp, and the registry of flag bits.

Input: padded stamps ``(n, side, side)`` (pure arrays, no I/O) and the SEP parameters.
Output: per stamp the number of SEP sources and a verdict under the paper's rules (its
section 4.1), with positions matched within ``match_radius_pix``:

- one source: blended if SEP flags it merged and it sits at a true position;
- two sources: blended if both sit at distinct true positions, else isolated;
- more: blended if every true source of a pair is matched, else "SEP failed" (-1);
- none: isolated.

In the stage the truth is unknown and the detection at the stamp centre is the only known
position: a stamp is blended when its central source is merged or SEP finds >= 2 sources.
Positions are 0-based pixel centres of the padded stamp, as in SEP.
"""

import concurrent.futures
import contextlib
import dataclasses
import logging
import pickle
import queue
import sys

import numpy as np

from . import children
from .errors import SepError
from .features import measure_stamps, sep_pixel_stack

log = logging.getLogger(__name__)

__all__ = [
    "FlagDefinition", "BH_FLAGS", "BH_EDGE", "BH_MASKED", "BH_NOT_SCORED", "BH_SEP_ERROR",
    "decode_flags", "extract_sources", "classify_stamps", "SepProcesses", "SEP_FAILED",
    "hybrid_flag",
]


@dataclasses.dataclass(frozen=True)
class FlagDefinition:
    """One bit of the ``BH_FLAGS`` column."""

    name: str
    value: int
    description: str


BH_EDGE = 1
BH_MASKED = 2
BH_NOT_SCORED = 4
BH_SEP_ERROR = 8

BH_FLAGS = (
    FlagDefinition("BH_EDGE", BH_EDGE, "part of the stamp lies off the tile (BH_EDGE_FRAC > 0)"),
    FlagDefinition("BH_MASKED", BH_MASKED, "the stamp holds masked pixels (BH_MASK_FRAC > 0): "
                   "zero weight, non-finite or SExtractor's -1e30"),
    FlagDefinition("BH_NOT_SCORED", BH_NOT_SCORED, "no BLEND_PROB: non-finite position, or "
                   "the stamp is entirely off the tile or masked"),
    FlagDefinition("BH_SEP_ERROR", BH_SEP_ERROR, "SEP raised an error on the stamp; SEP_NSRC "
                   "is -1 and SEP_BLEND_FLAG is 0"),
)
"""Registry of ``BH_FLAGS`` bits. SEP's own object flags are never folded in here."""

SEP_FAILED = -1
"""Verdict of a stamp where SEP finds more sources than there are true ones."""


def decode_flags(value):
    """Return the names of the bits set in a ``BH_FLAGS`` value.

    >>> decode_flags(5)
    ['BH_EDGE', 'BH_NOT_SCORED']
    >>> decode_flags(0)
    []
    """
    return [flag.name for flag in BH_FLAGS if int(value) & flag.value]


_KERNEL_3X3 = np.array([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]])
"""SExtractor's default.conv / kernel_3x3.conv, as SEP uses by default."""


def hybrid_flag(sep_blend, p_blend, threshold):
    """Return the hybrid verdict: SEP says blended, or ``p_blend >= threshold``.

    The one definition of ``BH_PAPER_FLAG`` (stage), of the hybrid of ``bh-stage evaluate``
    and of the accuracy that ``bh-stage train`` calibrates ``hybrid_threshold`` on.

    Parameters
    ----------
    sep_blend : array_like of int, shape (n,)
        SEP's verdict (``classify_stamps(...)["blend"]`` or ``SEP_BLEND_FLAG``): 1 blended;
        0 isolated and -1 (SEP failed) count as not blended.
    p_blend : array_like of float, shape (n,)
        P(blend); NaN (not scored) is never >= ``threshold``.
    threshold : float
        ``hybrid_threshold``.

    Returns
    -------
    ndarray of bool, shape (n,)

    Examples
    --------
    >>> hybrid_flag([1, 0, -1, 0], [0.1, 0.95, 0.95, float("nan")], 0.9).tolist()
    [True, True, True, False]
    """
    p_blend = np.asarray(p_blend, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return (np.asarray(sep_blend) == 1) | (p_blend >= threshold)


def extract_sources(stamp, sep_cfg):
    """Return SEP's sources in one stamp, thresholded at ``thresh_rms`` x its global rms.

    The structured array of ``sep.extract``: ``x``, ``y`` are 0-based positions in the
    stamp, ``flag`` holds SEP's object flags. SEP's bare ``Exception`` is not caught here.
    """
    import sep

    data = np.ascontiguousarray(stamp, dtype=np.float64)
    kernel = _KERNEL_3X3 if sep_cfg.filter_kernel == "3x3" else None
    bkg = sep.Background(data)
    return sep.extract(data, sep_cfg.thresh_rms, err=bkg.globalrms,
                       minarea=sep_cfg.minarea_pix, filter_kernel=kernel,
                       filter_type="conv", deblend_nthresh=sep_cfg.deblend_nthresh,
                       deblend_cont=sep_cfg.deblend_cont)


def _verdict(objects, true_xy, radius_pix, stage_mode):
    """Apply the paper's rules to one stamp's sources; ``true_xy`` rows are (x, y)."""
    import sep

    n = len(objects)
    if n == 0:
        return 0
    det = np.stack([objects["x"], objects["y"]], axis=1)
    dist = np.hypot(*(det[:, None, :] - true_xy[None, :, :]).transpose(2, 0, 1))
    near = dist <= radius_pix  # [detection, true source]
    merged = (objects["flag"] & sep.OBJ_MERGED) != 0
    if n == 1:
        return int(bool(merged[0] and near[0].any()))
    if stage_mode:
        return 1
    matched_true = near.any(axis=0).sum()
    if n == 2:
        both = near[0].any() and near[1].any() and matched_true == 2
        return int(bool(both))
    if len(true_xy) == 2 and matched_true == 2:
        return 1
    return SEP_FAILED


def classify_stamps(stamps, sep_cfg, true_xy=None, first_index=0, *, own_pixel_stack=True):
    """Run SEP on every stamp and label it blended or isolated with the paper's rules.

    Parameters
    ----------
    stamps : ndarray, shape (n, side, side)
        Noisy, background-subtracted stamps in ADU.
    sep_cfg : bh_stage.config.SepConfig
        Threshold (in units of each stamp's global rms), minimum area, filter and deblending
        parameters, and the matching radius in pixels.
    true_xy : ndarray, shape (n, k, 2), optional
        True (x, y) positions, 0-based in the stamp; NaN rows mark absent sources. None: the
        stage's rule, where the stamp centre ``(side // 2, side // 2)`` is the only known
        position and >= 2 sources mean blended.
    first_index : int
        Catalogue index of the first stamp, used in error messages.
    own_pixel_stack : bool
        Set SEP's pixel stack to twice the stamp for the call (default True, see
        ``features.sep_pixel_stack``); False keeps SEP's current one (its default: 300,000
        pixels), as the stage did before 0.5 (``bench/bench_sep.py`` compares the two).

    Returns
    -------
    ndarray, structured, shape (n,)
        ``nsrc`` (int16): number of SEP sources, -1 where SEP raised an error.
        ``blend`` (int8): 1 blended, 0 isolated, -1 SEP failed (more sources than true ones;
        only with ``true_xy``).
        ``error`` (bool): SEP raised an error on this stamp (``blend`` is then 0).

    Raises
    ------
    SepError
        Never for one bad stamp (that is ``error``); only if SEP cannot be imported.
    """
    try:
        import sep  # noqa: F401
    except ImportError as err:
        raise SepError(f"cannot import sep ({err}); install it with 'pip install sep'") from err
    stamps = np.asarray(stamps)
    n, side = stamps.shape[0], stamps.shape[-1]
    out = np.zeros(n, dtype=[("nsrc", "i2"), ("blend", "i1"), ("error", "?")])
    centre = np.array([[side // 2, side // 2]], dtype=np.float64)
    stack = (sep_pixel_stack(stamps.shape[-2] * side) if own_pixel_stack
             else contextlib.nullcontext())
    with stack:
        for i in range(n):
            if true_xy is None:
                known, stage_mode = centre, True
            else:
                known = true_xy[i][np.isfinite(true_xy[i]).all(axis=1)]
                stage_mode = False
            try:
                objects = extract_sources(stamps[i], sep_cfg)
            except Exception as err:  # SEP raises bare Exception for C-level failures.
                out["nsrc"][i], out["error"][i] = -1, True
                log.debug("obj %d: SEP failed: %s", first_index + i, err)
                continue
            out["nsrc"][i] = len(objects)
            out["blend"][i] = _verdict(objects, known, sep_cfg.match_radius_pix, stage_mode)
    return out


class SepProcesses:
    """``classify_stamps`` in ``n_processes`` child processes, so that SEP (which holds the
    GIL) runs beside the network instead of taking turns with it.

    Plain subprocesses (``python -m bh_stage.sep_flags`` through ``children.start``)
    fed pickled batches through pipes,
    not ``multiprocessing``: they start from any main module (a script without a
    ``__main__`` guard, stdin, a notebook) and inside daemonic Dask workers. Each runs in its
    own session, so Ctrl-C reaches only the parent; a child exits when its pipe closes, or is
    killed at once when the block ends on an exception (an error, Ctrl-C, SIGTERM), and on
    Linux when this process ends in any way (``children.die_with_parent``).
    Use as a context manager; ``submit`` (the SEP verdict) and ``submit_measure`` (the
    stamp features) return a ``concurrent.futures.Future``.
    """

    def __init__(self, n_processes):
        self._idle = queue.Queue()
        self._procs = []
        try:
            for _ in range(n_processes):
                self._procs.append(children.start(__name__))
                self._idle.put(self._procs[-1])
            self._threads = concurrent.futures.ThreadPoolExecutor(n_processes)
        except BaseException:  # Ctrl-C or SIGTERM before the block: no child left behind
            for proc in self._procs:
                proc.kill()
                proc.wait()
            raise

    def submit(self, stamps, sep_cfg, first_index=0):
        """Future of ``classify_stamps(stamps, sep_cfg, None, first_index)``."""
        return self._threads.submit(self._call, ("classify", (np.asarray(stamps), sep_cfg,
                                                              None, first_index)))

    def submit_measure(self, stamps, rms_adu):
        """Future of ``features.measure_stamps(stamps, rms_adu)``."""
        return self._threads.submit(self._call, ("measure", (np.asarray(stamps), rms_adu)))

    def _call(self, task):
        proc = self._idle.get()
        try:
            pickle.dump(task, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            proc.stdin.flush()
            ok, value = pickle.load(proc.stdout)
        except (EOFError, BrokenPipeError, pickle.UnpicklingError) as err:
            raise SepError(f"the SEP worker process stopped (exit code {proc.poll()})") from err
        finally:
            self._idle.put(proc)
        if not ok:
            raise value
        return value

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            # an error, Ctrl-C or SIGTERM: end the children now rather than after their batch
            for proc in self._procs:
                proc.kill()
        self._threads.shutdown(wait=True, cancel_futures=True)
        for proc in self._procs:
            children.end(proc)


_SERVED = {"classify": classify_stamps, "measure": measure_stamps}
"""What a ``SepProcesses`` child computes, by the name the parent sends."""


def _serve():
    """Child of ``SepProcesses``: answer pickled ``(name, args)`` calls of ``_SERVED`` until
    EOF."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            name, args = pickle.load(stdin)
        except EOFError:
            return
        try:
            answer = (True, _SERVED[name](*args))
        except Exception as err:  # sent back to the parent, raised there
            answer = (False, err)
        pickle.dump(answer, stdout, protocol=pickle.HIGHEST_PROTOCOL)
        stdout.flush()


if __name__ == "__main__":
    _serve()
