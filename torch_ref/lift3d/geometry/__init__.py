"""Geometry modules (PyTorch reference): hash-grid encoding, VanillaMLP, implicit volume."""
from torch_ref.lift3d.geometry.hashgrid import HashGrid, get_encoding  # noqa: F401
from torch_ref.lift3d.geometry.implicit_volume import ImplicitVolume  # noqa: F401
from torch_ref.lift3d.geometry.point_cloud import PAPRPointCloud  # noqa: F401
