"""Many tiles: ``bh-stage run config.yml TILE [TILE ...]`` in sequence or on a Dask cluster.

Input: a resolved ``RunConfig`` and a list of tiles. Output: for each tile, the output
catalogue of ``stage.run_stage`` and a ``TileResult`` (status, objects, seconds, error).
Tiles are independent: a failing tile is reported and the others go on. A tile whose output
is already complete (``output_complete``) is skipped unless ``overwrite`` is set, so an
interrupted run restarts where it stopped; outputs are renamed into place by ``io`` only
when whole, so a killed run leaves no partial catalogue under the final name.

Each process loads the network once and keeps it (``get_classifier``), so a Dask worker
pays the model load on its first tile only. Dask is imported only when a cluster is used.
"""

import dataclasses
import glob
import logging
import os
import threading
import time
from pathlib import Path

from . import io, model
from .config import config_hash
from .errors import BhStageError, ConfigError, InputFileError
from .extras import require
from .stage import output_columns, resolve_paths, run_stage

__all__ = ["run_tiles", "TileResult", "expand_tiles", "format_summary", "output_complete",
           "get_classifier", "clear_classifier_cache"]

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 2
"""Local Dask workers started by ``run_tiles`` when no scheduler is given."""

# --- one classifier per process ---------------------------------------------------------

_CLASSIFIERS = {}
_CLASSIFIERS_LOCK = threading.Lock()
_LOADS = 0  # classifiers loaded by this process; reported in TileResult.classifier_loads


def get_classifier(head, precision="f32", batch_size=256):
    """Return the classifier of ``head``, loading it on the first call in this process.

    A drop-in for ``model.load_classifier`` as the ``classifier_loader`` of ``run_stage``:
    the classifier is cached per process, keyed by (head path, its modification time,
    precision, batch size), so a Dask worker loads the network once for all its tiles.
    Threads of one process share it; the lock makes the first load happen once.

    Parameters
    ----------
    head : str or pathlib.Path
        Head ``.json``, as returned by ``heads.head_path``.
    precision : str
        ``"f32"`` or ``"bf16"``.
    batch_size : int
        Stamps per network call.

    Returns
    -------
    bh_stage.model.Classifier
    """
    global _LOADS
    path = Path(head)
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        mtime_ns = None  # model.load_classifier reports a missing head
    key = (str(path.resolve()), mtime_ns, precision, int(batch_size))
    with _CLASSIFIERS_LOCK:
        if key not in _CLASSIFIERS:
            _CLASSIFIERS[key] = model.load_classifier(head, precision=precision,
                                                      batch_size=batch_size)
            _LOADS += 1
            log.info("process %d: loaded classifier %s (%s, batch %d)", os.getpid(), path.name,
                     precision, batch_size)
        return _CLASSIFIERS[key]


def clear_classifier_cache():
    """Forget the classifiers cached by ``get_classifier`` in this process (tests)."""
    global _LOADS
    with _CLASSIFIERS_LOCK:
        _CLASSIFIERS.clear()
        _LOADS = 0


# --- results ----------------------------------------------------------------------------

@dataclasses.dataclass
class TileResult:
    """What happened to one tile.

    Attributes
    ----------
    tile : pathlib.Path
    status : str
        ``"done"`` (output written), ``"skipped"`` (a complete output was already there) or
        ``"failed"``.
    output : pathlib.Path or None
        The output catalogue; None if its path could not be resolved.
    n_objects : int or None
        Rows of the output; None for a failed tile.
    seconds : float
        Wall time spent on the tile, s; 0 for a skipped one.
    error : str
        One line: the message of a ``BhStageError``, or ``"<type>: <message>"`` otherwise.
    worker : str
        Where the tile ran: ``"local"`` or the Dask worker's address.
    classifier_loads : int
        Classifiers loaded so far by the process that ran the tile (1 once warm).
    """

    tile: Path
    status: str
    output: Path = None
    n_objects: int = None
    seconds: float = 0.0
    error: str = ""
    worker: str = ""
    classifier_loads: int = 0


def _one_line(err):
    """The message of a BhStageError, or 'Type: message' of anything else, on one line."""
    text = str(err) if isinstance(err, BhStageError) else f"{type(err).__name__}: {err}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _where():
    try:
        return require("distributed", "dask").get_worker().address
    except (ImportError, ValueError):
        return "local"


def _run_one(cfg, tile):
    """Run the stage on one tile and return a TileResult; runs on a worker. Never raises an
    ``Exception`` (a failure is a result), but lets KeyboardInterrupt and SystemExit through."""
    t0 = time.perf_counter()
    output = None
    try:
        output = resolve_paths(cfg, tile)[3]
        result = run_stage(cfg, tile, classifier_loader=get_classifier)
    except Exception as err:  # noqa: BLE001 - one tile's failure must not stop the others
        log.warning("%s: failed: %s", tile, _one_line(err), exc_info=not isinstance(
            err, BhStageError))
        return TileResult(Path(tile), "failed", output, None,
                          time.perf_counter() - t0, _one_line(err), _where(), _LOADS)
    return TileResult(Path(tile), "done", result.output, result.n_objects, result.seconds, "",
                      _where(), _LOADS)


# --- which tiles to run -----------------------------------------------------------------

def expand_tiles(names):
    """Expand tile names: an existing file is kept, a pattern with wildcards is globbed.

    Shells expand ``tiles/*.fits`` themselves; a quoted pattern (or one too long for the
    shell) is expanded here, sorted. Duplicates are dropped, the order kept.

    Parameters
    ----------
    names : iterable of str or pathlib.Path

    Returns
    -------
    list of pathlib.Path

    Raises
    ------
    InputFileError
        A pattern matches no file.
    """
    tiles = []
    for name in names:
        text = str(name)
        if not Path(text).exists() and glob.has_magic(text):
            matches = sorted(glob.glob(text))
            if not matches:
                raise InputFileError(f"{text}: the pattern matches no tile")
            tiles.extend(Path(m) for m in matches)
        else:
            tiles.append(Path(text))  # a missing tile fails on its own row
    return list(dict.fromkeys(tiles))


def output_complete(cfg, tile):
    """Check that a tile's output is complete and made with this config.

    Complete means: the output opens and its last row reads, its objects table has every
    column ``stage.output_columns(cfg)`` names and as many rows as the input catalogue, and its
    ``BH_CFGSH`` header key is ``config_hash(cfg)``.

    Parameters
    ----------
    cfg : bh_stage.config.RunConfig
    tile : str or pathlib.Path

    Returns
    -------
    complete : bool
    reason : str
        Why not, e.g. ``"no output"``, ``"3 rows, the catalogue has 5"``; ``""`` if complete.

    Raises
    ------
    ConfigError
        A path pattern of the config is invalid.
    """
    _, cat_path, _, output = resolve_paths(cfg, tile)
    if not output.exists():
        return False, "no output"
    hdu = cfg.catalogue_hdu if cfg.output_mode == "add" else "OBJECTS"
    try:
        out = io.read_table_info(output, hdu)
        cat = io.read_table_info(cat_path, cfg.catalogue_hdu)
    except BhStageError as err:
        return False, _one_line(err)
    missing = [name for name in output_columns(cfg) if name not in out.columns]
    if missing:
        return False, f"no column {missing[0]} in the output"
    if out.nrows != cat.nrows:
        return False, f"{out.nrows} rows, the catalogue has {cat.nrows}"
    if out.header.get("BH_CFGSH") != config_hash(cfg):
        return False, "made with another config (BH_CFGSH differs)"
    return True, ""


def _plan(cfg, tiles):
    """Return (results of tiles to skip or refuse, {index: (cfg, tile)} to run)."""
    done, todo, outputs = {}, {}, {}
    for i, tile in enumerate(tiles):
        try:
            output = resolve_paths(cfg, tile)[3]
            if output in outputs:
                raise ConfigError(f"output: tiles {tiles[outputs[output]]} and {tile} would "
                                  f"both write {output}; use {{stem}} in the output pattern")
            outputs[output] = i
            if cfg.overwrite:
                todo[i] = (cfg, tile)
                continue
            complete, reason = output_complete(cfg, tile)
        except ConfigError:
            raise
        except BhStageError as err:
            done[i] = TileResult(Path(tile), "failed", None, None, 0.0, _one_line(err))
            continue
        if complete:
            nrows = io.read_table_info(output, cfg.catalogue_hdu if cfg.output_mode == "add"
                                       else "OBJECTS").nrows
            done[i] = TileResult(Path(tile), "skipped", output, nrows)
            log.info("%s: skipped, %s is complete", tile, output)
        elif output.exists():
            log.info("%s: recomputing %s (%s)", tile, output, reason)
            todo[i] = (dataclasses.replace(cfg, overwrite=True), tile)
        else:
            todo[i] = (cfg, tile)
    return done, todo


# --- running ----------------------------------------------------------------------------

def _cluster_client(workers, scheduler):
    """Return (client, cluster or None): connect to ``scheduler`` or start a local cluster."""
    distributed = require("distributed", "dask")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster

    if scheduler is not None:
        log.info("connecting to the Dask scheduler at %s", scheduler)
        try:
            return Client(scheduler, timeout="30s"), None
        except OSError as err:
            raise InputFileError(f"--scheduler {scheduler}: cannot connect ({err}); start it "
                                 "with `dask scheduler` or check the address") from err
    # One thread per worker process; TensorFlow's own pools share the cores among workers.
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1",
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    log.info("starting a local Dask cluster: %d workers, 1 thread each", workers)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           host="127.0.0.1", dashboard_address=None, env=env)
    return Client(cluster), cluster


def _run_on_client(client, todo, results, progress, done_count, total):
    as_completed = require("distributed", "dask").as_completed

    futures = {client.submit(_run_one, tile_cfg, tile, pure=False,
                             key=f"bh-stage-tile-{i}-{Path(tile).name}"): i
               for i, (tile_cfg, tile) in todo.items()}
    try:
        for future in as_completed(futures):
            i = futures[future]
            try:
                results[i] = future.result()
            except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: the worker died
                tile = todo[i][1]
                log.warning("%s: failed on the cluster: %s", tile, _one_line(err))
                results[i] = TileResult(Path(tile), "failed", None, None, 0.0, _one_line(err))
            done_count += 1
            if progress is not None:
                progress(done_count, total, "tiles")
    finally:
        client.cancel(list(futures))


def run_tiles(cfg, tiles, workers=DEFAULT_WORKERS, scheduler=None, progress=None):
    """Run the stage on many tiles; a failing tile does not stop the others.

    Parameters
    ----------
    cfg : bh_stage.config.RunConfig
        Resolved config; its path patterns (``{dir}``, ``{stem}``) give each tile's inputs
        and output.
    tiles : list of str or pathlib.Path
        Tiles (see ``expand_tiles`` for patterns).
    workers : int
        Local Dask worker processes (1 thread each) when ``scheduler`` is None; 0 runs the
        tiles in sequence in this process. Default 2.
    scheduler : str, optional
        Address of a running Dask scheduler, e.g. ``tcp://host:8786``; ``workers`` is then
        ignored.
    progress : callable, optional
        Called as ``progress(done, total, "tiles")`` as tiles finish (skipped ones first).

    Returns
    -------
    list of TileResult
        One per tile, in the order of ``tiles``.

    Raises
    ------
    ConfigError
        Two tiles would write the same output, or ``workers`` < 0.
    InputFileError
        The scheduler cannot be reached.
    KeyboardInterrupt
        Passed on; outputs already written stay, and a re-run skips them.
    """
    tiles = [Path(t) for t in tiles]
    if scheduler is None and workers < 0:
        raise ConfigError(f"workers: {workers} is negative; use 0 to run in sequence")
    results, todo = _plan(cfg, tiles)
    total = len(tiles)
    log.info("%d tiles: %d to run, %d skipped or refused", total, len(todo),
             len(results))
    if progress is not None and results:
        progress(len(results), total, "tiles")
    if todo and scheduler is None and workers == 0:
        for i, (tile_cfg, tile) in todo.items():
            results[i] = _run_one(tile_cfg, tile)
            if progress is not None:
                progress(len(results), total, "tiles")
    elif todo:
        client, cluster = _cluster_client(min(workers, len(todo)) or 1, scheduler)
        try:
            _run_on_client(client, todo, results, progress, len(results), total)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    return [results[i] for i in range(total)]


def format_summary(results):
    """Return the summary table of ``run_tiles``: one line per tile and a total line.

    Columns: tile, status (done, skipped, failed), objects, seconds, error.
    """
    rows = [("tile", "status", "objects", "seconds", "error")]
    for r in results:
        rows.append((str(r.tile), r.status, "" if r.n_objects is None else str(r.n_objects),
                     f"{r.seconds:.1f}", r.error))
    widths = [max(len(row[k]) for row in rows) for k in range(4)]
    lines = ["  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                        row[2].rjust(widths[2]), row[3].rjust(widths[3]), row[4]]).rstrip()
             for row in rows]
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    objects = sum(r.n_objects or 0 for r in results if r.status == "done")
    lines.append(f"{len(results)} tiles: {counts['done']} done, {counts['skipped']} skipped, "
                 f"{counts['failed']} failed; {objects} objects scored")
    return "\n".join(lines)
