"""The random multiview camera sampler has no framework numerics: it is host-side numpy, so the reference
tree uses the one implementation in mindspore_impl/lift3d/data/multiview_cameras.py (no twin to keep in sync).
Convert its float32 arrays with torch.from_numpy where a torch module needs them."""
from mindspore_impl.lift3d.data.multiview_cameras import (  # noqa: F401
    RandomMultiviewCameraDataModule,
    RandomMultiviewCameraDataModuleConfig,
    get_mvp_matrix,
    get_projection_matrix,
    get_ray_directions,
    get_rays,
    look_at_c2w,
    sample_elevation_deg,
    spherical_to_cartesian,
)
