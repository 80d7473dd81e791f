"""Exports: images/strips/videos (video.py) and meshes (mesh.py)."""
