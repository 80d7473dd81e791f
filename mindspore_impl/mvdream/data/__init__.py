"""Training data for the multiview diffusion model (host-side numpy). Importing the package registers the
training data module (datamodule.py: "multiview-primitives-datamodule")."""
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
from mindspore_impl.mvdream.data.datamodule import MultiviewDataModule  # noqa: F401,E402
