"""Volume-rendering math shared by the 3D systems (lift3d) and the model families that render (genvs)."""
