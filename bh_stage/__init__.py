"""bh-stage: BlendHunter blend identification as a weak-lensing pipeline stage.

Reads a tile and its SExtractor catalogue, scores a stamp at every detection for an
unrecognised blend (the tile head), for the paper's blend (a BlendHunter network, Farrens et
al. 2021) and with SEP, and writes blend columns.
"""

__version__ = "0.16.0"

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s: %(message)s"
"""Format of bh-stage's log lines on stderr: the command line's and its network process's."""
