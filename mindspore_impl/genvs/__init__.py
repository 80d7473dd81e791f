"""GeNVS (jfozard/genvs_unofficial) model family, MindSpore: the EDM building blocks (edm.py)."""
