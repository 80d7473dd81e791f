"""Systems: the object the trainer drives (see base.py for the interface)."""
from mindspore_impl.lift3d.systems.base import BaseSystem, BaseSystemConfig  # noqa: F401
from mindspore_impl.lift3d.systems.mvdream_system import MVDreamSystem, MVDreamSystemConfig  # noqa: F401
