"""Camera data: the sampler is framework-free numpy, shared with mindspore_impl (see multiview_cameras.py)."""
from torch_ref.lift3d.data.multiview_cameras import (  # noqa: F401
    RandomMultiviewCameraDataModule,
    RandomMultiviewCameraDataModuleConfig,
)
