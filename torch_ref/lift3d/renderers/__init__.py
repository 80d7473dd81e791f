from torch_ref.lift3d.renderers.nerf_volume_renderer import NeRFVolumeRenderer  # noqa: F401
from torch_ref.lift3d.renderers.occupancy_grid import OccupancyGrid  # noqa: F401
from torch_ref.lift3d.renderers.papr_renderer import PAPRRenderer  # noqa: F401
