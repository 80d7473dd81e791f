"""3D systems: base.py (geometry, material, background, renderer, evaluation, export) and the systems on it."""
from mindspore_impl.lift3d.systems.base import BaseLift3DSystem, BaseLift3DSystemConfig  # noqa: F401
from mindspore_impl.lift3d.systems.mvdream_system import MVDreamSystem, MVDreamSystemConfig  # noqa: F401
from mindspore_impl.lift3d.systems.reconstruction_system import (  # noqa: F401
    ReconstructionSystem,
    ReconstructionSystemConfig,
)
from mindspore_impl.lift3d.systems.papr_reconstruction_system import (  # noqa: F401
    PAPRReconstructionSystem,
    PAPRReconstructionSystemConfig,
)
from mindspore_impl.lift3d.systems.papr_frames_system import PAPRFramesSystem, PAPRFramesSystemConfig  # noqa: F401
from mindspore_impl.lift3d.systems.zero123_system import Zero123System, Zero123SystemConfig  # noqa: F401
