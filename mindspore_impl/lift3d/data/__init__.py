"""Data modules of the 3D systems: cameras for text-to-3D (host-side numpy) and generated views."""
from neutral.lift3d.multiview_cameras import (  # noqa: F401
    RandomMultiviewCameraDataModule,
    RandomMultiviewCameraDataModuleConfig,
)
from mindspore_impl.lift3d.data.generated_views import GeneratedViewsDataModule  # noqa: F401,E402
