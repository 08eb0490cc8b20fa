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

from .cli import Terminated, _HideNativeLogLines, sigterm_as_interrupt
from .errors import BhStageError


def main():
    """Run the ceci stage named by ``sys.argv[1]``; return the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        from .ceci_stage import BlendHunterStage

        with sigterm_as_interrupt(), _HideNativeLogLines():
            return BlendHunterStage.main()
    except BhStageError as err:
        print(f"bh_stage {' '.join(sys.argv[1:2])}: error: {err}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"bh_stage {' '.join(sys.argv[1:2])}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"bh_stage {' '.join(sys.argv[1:2])}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
