"""Experiments at CPU scale that test the claims of the "revisiting" paper.

``paired``: statistics of rows trained in pairs (same seed, same initial weights, same data order).
``probe``: the mechanism probe, deformable layers and an FCOS head on frozen c3 features.
"""
from .paired import PairedDifference, PairingError, check_pairing, paired_difference, summarize
from .probe import ProbeSettings, run_probe

__all__ = ['PairedDifference', 'PairingError', 'ProbeSettings', 'check_pairing', 'paired_difference', 'run_probe',
           'summarize']
