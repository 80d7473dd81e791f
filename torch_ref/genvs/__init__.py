"""GeNVS (jfozard/genvs_unofficial) model family, PyTorch reference: the EDM building blocks (edm.py)."""
from torch_ref.genvs.edm import EDMPrecond, edm_loss, sample_edm, uniform_noise_dropout

__all__ = ["EDMPrecond", "edm_loss", "sample_edm", "uniform_noise_dropout"]
