"""Materials: shade geometry features into RGB (MindSpore)."""
from mindspore_impl.lift3d.materials.diffuse_with_point_light import DiffuseWithPointLightMaterial  # noqa: F401
from mindspore_impl.lift3d.materials.no_material import NoMaterial  # noqa: F401
