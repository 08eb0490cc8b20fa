"""Command line: ``bh-stage run|inspect|simulate|train|evaluate|train-tile|evaluate-tile|
show-config``.

Parses arguments, sets up logging and a progress bar, and calls one API function per
subcommand. A ``BhStageError`` prints one line to stderr and exits with code 2; Ctrl-C prints
``interrupted`` and exits with code 130, SIGTERM (what SLURM, Kubernetes and Dask send
first) ``terminated`` and 143: both leave no output and no temporary file (outputs are
written atomically) and end the SEP child processes.
"""

import argparse
import contextlib
import importlib
import inspect
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading

from . import LOG_FORMAT, __version__
from .errors import BhStageError

__all__ = ["main", "run_main", "run_guarded", "Terminated", "sigterm_as_interrupt",
           "HideNativeLogLines"]

log = logging.getLogger("bh_stage")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C raises ``KeyboardInterrupt``, so that
    the same clean-up runs (temporary outputs removed, SEP children ended)."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises ``Terminated`` (main thread only; elsewhere Python
    cannot set handlers and the block runs unchanged). The previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the clean-up
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _ProgressBar:
    """A tqdm bar driven by ``progress(done, total, step)`` calls; a new step starts a new bar."""

    def __init__(self, quiet):
        self.quiet, self.bar, self.step = quiet, None, None

    def __call__(self, done, total, step=""):
        if self.quiet:
            return
        if self.bar is None or step != self.step:
            from tqdm import tqdm

            self.close()
            # stderr may be the pipe of HideNativeLogLines: take the width of the terminal
            self.bar = tqdm(total=total, desc=step, file=sys.stderr,
                            ncols=shutil.get_terminal_size().columns)
            self.step = step
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class HideNativeLogLines:
    """Drop TensorFlow's C++ start-up lines (absl INFO and WARNING, and TensorFlow Lite's
    "INFO: Created TensorFlow Lite XNNPACK delegate", which its 8-bit tile head prints once a
    process) from file descriptor 2.

    ``TF_CPP_MIN_LOG_LEVEL`` does not silence the lines absl prints before
    ``absl::InitializeLog()`` (oneDNN, CUDA drivers), nor TensorFlow Lite's own logger, so
    stderr goes through a pipe and a
    thread copies everything else unchanged: errors, warnings, Python's own lines, and the
    progress bar (its writes start with ``\\r`` and are copied at once; other pieces wait
    for the end of their line). Child processes inherit the pipe.
    """

    NATIVE = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\)"
                        rb"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
                        rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$)")

    def __enter__(self):
        sys.stderr.flush()
        self.end = f"\0bh-stage end of stderr {os.getpid()} {id(self)}\n".encode()
        self.done = threading.Event()
        self.saved = os.dup(2)
        read, self.write = os.pipe()
        os.dup2(self.write, 2)
        self.thread = threading.Thread(target=self._copy, args=(read, os.dup(self.saved)),
                                       daemon=True)
        self.thread.start()
        return self

    def _copy(self, read, stderr):
        with os.fdopen(stderr, "wb", 0) as out:
            pending = b""
            while chunk := os.read(read, 65536):
                *pieces, pending = re.split(rb"(?<=\n)|(?=\r)", pending + chunk)
                if pending.startswith(b"\r"):
                    pieces.append(pending)
                    pending = b""
                for piece in pieces:
                    if piece.endswith(self.end):  # after an unfinished line, if any
                        out.write(piece[:-len(self.end)])
                        self.done.set()
                    elif not self.NATIVE.match(piece):
                        out.write(piece)
            out.write(pending)
        os.close(read)
        self.done.set()

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.write(self.write, self.end)
        os.dup2(self.saved, 2)
        os.close(self.write)
        os.close(self.saved)
        self.done.wait(timeout=10)  # the pipe stays open while a child process lives


def _cmd_run(args):
    from .config import RunConfig, load_config
    from .stage import run_stage
    from .tiles import DEFAULT_WORKERS, expand_tiles, format_summary, run_tiles

    overrides = list(args.set)
    for key in ("catalogue", "output", "weight"):
        if getattr(args, key) is not None:
            overrides.append(f"{key}={json.dumps(getattr(args, key))}")  # a YAML string
    if args.overwrite:
        overrides.append("overwrite=true")
    cfg = load_config(args.config, RunConfig, overrides)
    if args.serial:
        args.workers = 0
    tiles = expand_tiles(args.tiles)
    bar = _ProgressBar(args.quiet)
    if len(tiles) == 1 and args.workers is None and args.scheduler is None:
        try:
            return run_stage(cfg, tiles[0], progress=bar).summary()
        finally:
            bar.close()
    workers = DEFAULT_WORKERS if args.workers is None else args.workers
    if args.verbose < 2:  # Dask's scheduler and nannies log every connection at INFO
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    try:
        results = run_tiles(cfg, tiles, workers=workers, scheduler=args.scheduler,
                            progress=bar)
    finally:
        bar.close()
    table = format_summary(results)
    failed = sum(r.status == "failed" for r in results)
    if failed:
        print(table)
        raise BhStageError(f"{failed} of {len(results)} tiles failed; see the table above, "
                           "fix them and run the same command again (done tiles are skipped)")
    return table


def _cmd_inspect(args):
    from .inspect_output import run_inspect

    return run_inspect(args.catalogue, args.tile, args.output_dir, args.weight, args.x_column,
                       args.y_column, args.hdu, args.seed, args.overwrite)


MODULES = {"simulate": "study.simulate", "train": "study.train", "evaluate": "study.evaluate",
           "train-tile": "study.train_tile", "evaluate-tile": "study.evaluate_tile"}
"""Module of each config-file subcommand (all in the study, extra [study]); it defines
``run_<subcommand with _>(cfg)``."""


def _cmd_schema(name):
    """Return the command of subcommand ``name``: load its config, call its ``run_`` function."""
    def command(args):
        from . import config
        from .extras import check_extra

        check_extra("study")
        module = importlib.import_module(f".{MODULES[name]}", __package__)
        cfg = config.load_config(args.config, config.SCHEMAS[name], args.set)
        bar = _ProgressBar(args.quiet)
        try:
            return getattr(module, f"run_{name.replace('-', '_')}")(cfg, progress=bar)
        finally:
            bar.close()
    return command


def _cmd_show_config(args):
    """The commented reference of a config, headed by its schema's docstring; for ``run`` it
    is example_config/config.yml."""
    from . import config

    cls = config.SCHEMAS[args.command_name]
    doc = inspect.cleandoc(cls.__doc__).replace("``", "")
    header = [f"# {line}".rstrip() for line in doc.splitlines()]
    header += ["#", f"# Every key with its default and help: `bh-stage show-config "
                    f"{args.command_name}`."]
    return "\n".join(header + [config.config_reference(cls)])


def build_parser():
    """Return the argparse parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bh-stage", description="BlendHunter blend identification for survey tiles.")
    parser.add_argument("--version", action="version", version=f"bh-stage {__version__}")
    # -v / -q go before or after the subcommand; main() adds the two counts up.
    for p, prefix in ((parser, ""), (common := argparse.ArgumentParser(add_help=False), "sub_")):
        p.add_argument("-v", "--verbose", action="count", default=0, dest=prefix + "verbose",
                       help="more log lines, and TensorFlow's start-up lines (-vv for debug)")
        p.add_argument("-q", "--quiet", action="store_true", dest=prefix + "quiet",
                       help="only errors and the summary line; no progress bar")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_set(p):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set sep.minarea_pix=5")

    run = sub.add_parser("run", parents=[common],
                         help="score every detection of one or more tiles")
    run.add_argument("config", help="YAML config (see example_config/config.yml)")
    run.add_argument("tiles", nargs="+", metavar="TILE",
                     help="tile FITS images (.fits or tile-compressed .fits.fz); several tiles "
                     "or a quoted glob pattern run on a Dask cluster")
    run.add_argument("--catalogue", help="SExtractor catalogue (overrides the config)")
    run.add_argument("--output", help="output catalogue (overrides the config)")
    run.add_argument("--weight", help="weight map (overrides the config)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an existing output (several tiles: also complete ones)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="local Dask worker processes, 1 thread each (default 2 for "
                       "several tiles; 0: in sequence in this process)")
    where.add_argument("--serial", action="store_true",
                       help="run the tiles in sequence in this process (same as --workers 0)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on an existing Dask cluster, e.g. tcp://host:8786")
    add_set(run)
    run.set_defaults(func=_cmd_run)

    from .config import RunConfig

    defaults = RunConfig()
    inspect_ = sub.add_parser("inspect", parents=[common],
                              help="QA gallery, histograms and map of a run's output")
    inspect_.add_argument("catalogue", metavar="OUTPUT_CATALOGUE",
                          help="output catalogue of bh-stage run")
    inspect_.add_argument("tile", metavar="TILE", help="the tile that run read")
    inspect_.add_argument("-o", "--output-dir", metavar="OUTDIR",
                          help="output folder (default: <catalogue stem>_inspect beside it)")
    inspect_.add_argument("--weight", default="auto",
                          help="the run's weight map: auto (as the stage), a path, or none")
    inspect_.add_argument("--x-column", default=defaults.x_column,
                          help="1-based x position column (default %(default)s)")
    inspect_.add_argument("--y-column", default=defaults.y_column,
                          help="1-based y position column (default %(default)s)")
    inspect_.add_argument("--hdu", default=defaults.catalogue_hdu,
                          help="catalogue HDU name or index (default %(default)s)")
    inspect_.add_argument("--seed", type=int, default=defaults.seed,
                          help="the run's seed, for the stamps' noise fill (default "
                          "%(default)s)")
    inspect_.add_argument("--overwrite", action="store_true",
                          help="write into a folder that holds files, replacing ours")
    inspect_.set_defaults(func=_cmd_inspect)

    for name, text in (("simulate", "simulate stamp data sets or a tile with GalSim"),
                       ("train", "train a BlendHunter head on simulated stamps"),
                       ("evaluate", "compare BlendHunter and SEP on a simulated test set"),
                       ("train-tile", "train the tile head (unrecognised blends) on "
                        "simulated tiles"),
                       ("evaluate-tile", "score every column against the truth of simulated "
                        "test tiles")):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("config", help=f"YAML config (see example_config/{name}.yml)")
        add_set(p)
        p.set_defaults(func=_cmd_schema(name))

    show = sub.add_parser("show-config", parents=[common],
                          help="print the commented reference of a config")
    show.add_argument("command_name", choices=("run",) + tuple(MODULES))
    show.set_defaults(func=_cmd_show_config)
    return parser


def parse_args(argv=None):
    """Parse ``argv``; ``-v`` and ``-q`` count wherever they are, before or after the
    subcommand."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose += args.sub_verbose
    args.quiet = args.quiet or args.sub_quiet
    if args.verbose and args.quiet:
        parser.error("-q and -v exclude each other")
    return args


def main(argv=None):
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format=LOG_FORMAT)
    code, summary = run_guarded(f"bh-stage {args.command}", lambda: args.func(args),
                                hide_native=not args.verbose)
    if code == 0:
        print(summary)
    return code


def run_guarded(prog, func, hide_native=True):
    """Call ``func()`` as a command does; return ``(exit code, its result)``.

    A ``BhStageError`` prints ``<prog>: error: <message>`` on stderr (code 2), SIGTERM
    ``<prog>: terminated`` (143), Ctrl-C ``<prog>: interrupted`` (130); the result is then
    None. With ``hide_native``, TensorFlow's C++ log lines are kept off stderr."""
    try:
        with sigterm_as_interrupt(), (HideNativeLogLines() if hide_native
                                      else contextlib.nullcontext()):
            return 0, func()
    except BhStageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2, None
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 143, None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130, None


def run_main():
    """Console-script entry point."""
    sys.exit(main())
