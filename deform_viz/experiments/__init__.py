"""Experiments at CPU scale that test the claims of the "revisiting" paper.

``paired``: statistics of rows trained in pairs (same seed, same initial weights, same data order).
"""
from .paired import PairedDifference, PairingError, check_pairing, paired_difference, summarize

__all__ = ['PairedDifference', 'PairingError', 'check_pairing', 'paired_difference', 'summarize']
