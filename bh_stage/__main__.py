"""``python -m bh_stage BlendHunterStage --tile=T --catalogue=C --config=F``: one ceci stage.

ceci's single-stage entry point (the command its pipelines run for each stage; see
``bh_stage.ceci_stage``). A ``BhStageError`` prints one line to stderr and exits with code
2; Ctrl-C exits with 130 and SIGTERM with 143, leaving no output, as in ``bh-stage``;
TensorFlow's C++ start-up lines are dropped from stderr as in ``bh-stage``. The
``bh-stage`` command line is ``bh_stage.cli``.
"""

import logging
import os
import sys

from .cli import run_guarded


def _run_stage():
    from .ceci_stage import BlendHunterStage  # its extra is named if missing

    return BlendHunterStage.main()


def main():
    """Run the ceci stage named by ``sys.argv[1]``; return the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    code, result = run_guarded(f"bh_stage {' '.join(sys.argv[1:2])}", _run_stage)
    return result if code == 0 else code


if __name__ == "__main__":
    sys.exit(main())
