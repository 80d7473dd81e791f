"""Framework-neutral parts of the lift3d modules (config dataclasses, validation, constants, numpy math),
imported by both mindspore_impl/lift3d and torch_ref/lift3d. Nothing here imports MindSpore or torch.

They live in this package, not beside their modules, because each lift3d subpackage __init__ imports
its MindSpore modules eagerly (that import registers the module types) and so would pull MindSpore in.
"""
