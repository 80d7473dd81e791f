"""Camera data for text-to-3D (host-side numpy)."""
from neutral.lift3d.multiview_cameras import (  # noqa: F401
    RandomMultiviewCameraDataModule,
    RandomMultiviewCameraDataModuleConfig,
)
