"""xray-ablate: ablation experiments for 4-class chest X-ray classification, with error bars."""

__version__ = "0.1.0"
