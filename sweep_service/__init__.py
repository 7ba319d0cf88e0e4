"""Sweep service: pretrained CNNs x pruning algorithms x pruning rates, on Ray."""
__version__ = "0.1.0"
