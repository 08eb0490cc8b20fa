"""The study: simulation, tile sets and their truth, training, evaluation, shear, metrics.

It uses the stage (``bh_stage``) and is never imported by it. Its third-party packages come
with the extra ``[study]`` (``pip install 'bh-stage[study]'``); the ``bh-stage`` study
commands (simulate, train, evaluate, train-tile, evaluate-tile) say so when it is missing.
"""
