"""GeNVS (jfozard/genvs_unofficial) model family, PyTorch reference: the EDM building blocks (edm.py)."""
