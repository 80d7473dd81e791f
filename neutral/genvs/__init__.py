"""Framework-neutral parts of the GeNVS model family (jfozard/genvs_unofficial): EDM sigma schedules,
preconditioning coefficients, host draws and sampler configs. Nothing here imports MindSpore or torch."""
