"""The only module that opens files.

Tiles and weight maps (plain or tile-compressed FITS), SExtractor catalogues (FITS_LDAC and
FITS_1.0), output catalogues, simulated data sets (HDF5) and simulated tiles. SExtractor and
FITS positions are 1-based; everything this module returns is 0-based (``FITS_ORIGIN``).
"""

import logging

log = logging.getLogger(__name__)

FITS_ORIGIN = 1
"""Index of the first pixel in FITS and SExtractor coordinates; numpy and SEP use 0."""

# --- tiles and catalogues (stage) -------------------------------------------------------


# --- simulated data sets and tiles (simulate) -------------------------------------------
