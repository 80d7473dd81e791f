"""Framework-neutral parts of the Zero-1-to-3 view-conditioned model (configs, checkpoint layout, camera T)."""
