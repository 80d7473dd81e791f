"""Materials (PyTorch reference)."""
from torch_ref.lift3d.materials.diffuse_with_point_light import DiffuseWithPointLightMaterial  # noqa: F401
from torch_ref.lift3d.materials.no_material import NoMaterial  # noqa: F401
