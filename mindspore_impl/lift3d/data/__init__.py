"""Camera data for text-to-3D (host-side numpy)."""
from mindspore_impl.lift3d.data.multiview_cameras import (  # noqa: F401
    RandomMultiviewCameraDataModule,
    RandomMultiviewCameraDataModuleConfig,
)
