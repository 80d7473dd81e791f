"""Geometry modules (MindSpore): hash-grid encoding, VanillaMLP glue, implicit volume."""
from mindspore_impl.lift3d.geometry.hashgrid import HashGrid, get_encoding  # noqa: F401
from mindspore_impl.lift3d.geometry.implicit_volume import ImplicitVolume  # noqa: F401
from mindspore_impl.lift3d.geometry.point_cloud import PAPRPointCloud  # noqa: F401
