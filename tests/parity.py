"""Shared parity assertions (docs/architecture.md, "Parity")."""
import numpy as np


def to_numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().float().numpy()
    if hasattr(x, "asnumpy"):
        return x.asnumpy().astype(np.float32)
    return np.asarray(x, dtype=np.float32)


def assert_parity(actual, reference, name: str, rel: float = 1e-4) -> float:
    """max |actual - reference| <= rel * max(1, max |reference|); prints and returns the error."""
    a, r = to_numpy(actual), to_numpy(reference)
    assert a.shape == r.shape, f"{name}: shape {a.shape} vs reference {r.shape}"
    err = float(np.max(np.abs(a - r))) if a.size else 0.0
    scale = max(1.0, float(np.max(np.abs(r))) if r.size else 0.0)
    tol = rel * scale
    print(f"[parity] {name}: max abs err {err:.3e} (tolerance {tol:.3e}, max |ref| {scale:.3e})")
    assert err <= tol, f"{name}: max abs err {err:.3e} exceeds tolerance {tol:.3e}"
    return err
