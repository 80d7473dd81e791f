"""Training data for the multiview diffusion model (host-side numpy)."""
from mindspore_impl.mvdream.data.primitives import (  # noqa: F401
    COLORS,
    SHAPES,
    DatasetError,
    canonical_cameras,
    inside,
    load_dataset,
    parse_prompt,
    make_dataset,
    render_silhouettes,
    save_dataset,
    shape_sdf,
    volume_iou,
)
