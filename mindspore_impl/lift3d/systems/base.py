"""The base of every 3D system (threestudio's BaseLift3DSystem, threestudio/systems/base.py upstream): it builds
geometry, material, background and renderer from their registered types and typed configs, and owns what every
3D system does the same way: host-side draws (background augmentation, shading), evaluation renders
(validation, test orbit) and the mesh export. A system on top adds its own modules (guidance, prompt processor)
and its training step; the step, checkpoint and module-step plumbing come from core/system.py.

    class MySystem(BaseLift3DSystem):
        def configure(self):
            classes = self.find_classes(("guidance",))        # 3D module types + the system's own
            sub = self.parse_sub_configs(classes)             # every typed config, before anything is built
            self.build_3d(sub)                                # geometry, material, background, renderer
            ...
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Optional

import mindspore as ms
import numpy as np

from mindspore_impl.core.system import BaseSystem, BaseSystemConfig
from neutral import registry
from neutral.config import ConfigError, parse_structured, to_container
from neutral.schedule import parse_schedule

MODULES_3D = ("geometry", "material", "background", "renderer")


@dataclass
class BaseLift3DSystemConfig(BaseSystemConfig):
    geometry_type: str = "implicit-volume"
    geometry: dict = field(default_factory=dict)
    material_type: str = "no-material"
    material: dict = field(default_factory=dict)
    background_type: str = "neural-environment-map-background"
    background: dict = field(default_factory=dict)
    renderer_type: str = "nerf-volume-renderer"
    renderer: dict = field(default_factory=dict)
    # Cell.recompute() on the 3D field (and a system's own large cells): less activation memory, more compute
    use_recompute: bool = False
    # mesh export (lift3d/export/mesh.py MeshExportConfig); threshold defaults to the geometry's
    exporter_type: str = "mesh-exporter"
    exporter: dict = field(default_factory=dict)


def ever_nonzero(value: Any) -> bool:
    """Whether a scheduled weight is non-zero at some step (only those losses are in the graph)."""
    ramp = parse_schedule(value)
    if ramp is None:
        return float(value) != 0.0
    return ramp[1] != 0.0 or ramp[2] != 0.0


def import_lift3d_modules() -> None:
    """Import the lift3d subpackages: their modules register their types on import."""
    package = importlib.import_module("mindspore_impl.lift3d")
    for info in pkgutil.iter_modules(package.__path__):
        if info.ispkg:
            importlib.import_module(f"mindspore_impl.lift3d.{info.name}")


class BaseLift3DSystem(BaseSystem):
    Config = BaseLift3DSystemConfig

    # ----- construction (configure() of a subclass calls these in its own order)

    def configure(self) -> None:
        classes = self.find_classes()
        self.build_3d(classes, self.parse_sub_configs(classes))
        if self.cfg.use_recompute:
            self.apply_recompute()

    def find_classes(self, extra: tuple[str, ...] = ()) -> dict[str, type]:
        """{key: registered class} for the 3D modules and `extra` keys, from cfg.<key>_type."""
        import_lift3d_modules()
        out = {}
        for key in MODULES_3D + tuple(extra):
            name = getattr(self.cfg, f"{key}_type")
            try:
                out[key] = registry.find(name)
            except KeyError as exc:
                raise ConfigError(f"system.{key}_type: {exc.args[0]}") from None
        if self.cfg.exporter_type != "mesh-exporter":
            raise ConfigError(f"system.exporter_type: only 'mesh-exporter' is supported, got {self.cfg.exporter_type!r}")
        return out

    def parse_sub_configs(self, classes: dict[str, type], raw: Optional[dict] = None) -> dict[str, Any]:
        """Each module's typed config (cls.Config; unknown keys fail here, naming the section), plus the exporter's.
        raw: configs to use instead of cfg.<key> (a system that links or adjusts sections)."""
        from mindspore_impl.lift3d.export.mesh import MeshExportConfig
        raw = {**{key: to_container(getattr(self.cfg, key)) or {} for key in classes}, **(raw or {})}
        parsed = {key: parse_structured(cls.Config, raw[key], f"system.{key}") for key, cls in classes.items()}
        exporter = dict(to_container(self.cfg.exporter) or {})
        exporter.setdefault("threshold", float(getattr(parsed["geometry"], "isosurface_threshold", 25.0)))
        parsed["exporter"] = parse_structured(MeshExportConfig, exporter, "system.exporter")
        return parsed

    def check_losses(self, sub: dict, terms) -> dict:
        """Parse system.loss (lambda_<term> for each of `terms`; unknown keys fail) into self.loss_weights;
        returns {term: its weight is ever non-zero} (only those terms enter the graph)."""
        loss = to_container(self.cfg.loss) or {}
        allowed = [f"lambda_{t}" for t in terms]
        unknown = sorted(set(loss) - set(allowed))
        if unknown:
            raise ConfigError(f"bad config for system.loss: unknown keys {unknown}. Allowed keys: {', '.join(allowed)}")
        self.loss_weights = {t: loss.get(f"lambda_{t}", 0.0) for t in terms}
        active = {t: ever_nonzero(self.loss_weights[t]) for t in terms}
        if active.get("orient") and getattr(sub["geometry"], "normal_type", None) is None:
            raise ConfigError("system.loss.lambda_orient > 0 needs normals: set system.geometry.normal_type "
                              "(analytic, finite_difference or finite_difference_laplacian)")
        return active

    def build_3d(self, classes: dict[str, type], sub: dict[str, Any]) -> None:
        """Geometry, material, background and renderer (which holds the other three)."""
        self.geometry = classes["geometry"](sub["geometry"])
        self.material = classes["material"](sub["material"])
        self.background = classes["background"](sub["background"])
        self.renderer = classes["renderer"](sub["renderer"], self.geometry, self.material, self.background)
        self.exporter_cfg = sub["exporter"]

    def recompute_cells(self) -> list:
        """Cells that cfg.use_recompute recomputes in the backward pass; systems add their own. A renderer with its
        own list (papr-renderer: the attention MLPs and the decoder) gives it; else the implicit volume's networks."""
        own = getattr(self.renderer, "recompute_cells", None)
        if callable(own):
            return list(own())
        return [self.geometry.encoding, self.geometry.density_network, self.geometry.feature_network]

    def apply_recompute(self) -> None:
        for cell in self.recompute_cells():
            cell.recompute()

    # ----- host-side draws of a training step (from self.rng)

    def draw_background(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(colour (B,3), mask ()) of the random background augmentation (mask 0: no augmentation)."""
        color = None
        if hasattr(self.background, "draw_aug"):
            color = self.background.draw_aug(self.rng, batch_size, training=True)
        if color is None:
            return np.zeros((batch_size, 3), np.float32), np.zeros((), np.float32)
        color = np.broadcast_to(np.asarray(color, np.float32).reshape(-1, 3), (batch_size, 3))
        return np.ascontiguousarray(color), np.ones((), np.float32)

    def light_colors(self, shading: dict) -> tuple[np.ndarray, np.ndarray]:
        """(ambient, diffuse) (3,) arrays; the material's configured colours stand in for None (same values)."""
        mcfg = self.material.cfg
        ambient = shading["ambient_color"]
        diffuse = shading["diffuse_color"]
        if ambient is None:
            ambient = np.asarray(getattr(mcfg, "ambient_light_color", (0.0, 0.0, 0.0)), np.float32)
        if diffuse is None:
            diffuse = np.asarray(getattr(mcfg, "diffuse_light_color", (0.0, 0.0, 0.0)), np.float32)
        return np.asarray(ambient, np.float32), np.asarray(diffuse, np.float32)

    # ----- evaluation

    def render_eval(self, batch: dict) -> dict:
        """Chunked, deterministic render (no jitter, no augmentation) of an eval batch -> numpy maps."""
        shading = self.material.draw_shading(self.rng, training=False)  # eval draws no random numbers
        ambient, diffuse = shading["ambient_color"], shading["diffuse_color"]
        out = self.renderer.render_chunked(
            ms.Tensor(np.asarray(batch["rays_o"], np.float32)), ms.Tensor(np.asarray(batch["rays_d"], np.float32)),
            ms.Tensor(np.asarray(batch["light_positions"], np.float32)), None, None, shading["shading"],
            None if ambient is None else ms.Tensor(ambient), None if diffuse is None else ms.Tensor(diffuse))
        return {k: v.asnumpy() for k, v in out.items()}

    def eval_images(self, batch: dict) -> dict[str, np.ndarray]:
        out = self.render_eval(batch)
        images = {"rgb": np.clip(out["comp_rgb"][0], 0.0, 1.0)}
        if "comp_normal" in out:
            images["normal"] = np.clip(out["comp_normal"][0], 0.0, 1.0)
        images["opacity"] = np.clip(out["opacity"][0], 0.0, 1.0)
        return images

    def validation_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        return self.eval_images(batch)

    def test_step(self, batch: dict, index: int) -> dict[str, np.ndarray]:
        return self.eval_images(batch)

    # ----- export

    def _density_np(self, points: np.ndarray) -> np.ndarray:
        return self.geometry.forward_density(ms.Tensor(points)).asnumpy()[:, 0]

    def _color_np(self, points: np.ndarray) -> np.ndarray:
        _, features = self.geometry(ms.Tensor(points))
        return self.material.export(features)["albedo"].asnumpy()

    def export(self, out_dir: str) -> list[str]:
        """Marching cubes on the density at the geometry's isosurface threshold, vertex colours from
        field + material, written as obj/ply/glb (lift3d/export/mesh.py). A point-cloud geometry (papr-point-cloud,
        which has `active_arrays`) has no density: its points are written as points.ply (lift3d/export/point_cloud.py)
        and the mesh exporter's settings do not apply."""
        if callable(getattr(self.geometry, "active_arrays", None)):
            from mindspore_impl.lift3d.export.point_cloud import export_point_cloud
            return export_point_cloud(out_dir, *self.geometry.active_arrays())
        from mindspore_impl.lift3d.export.mesh import export_mesh
        r = float(self.geometry.cfg.radius)
        return export_mesh(self._density_np, (-r, -r, -r), (r, r, r), out_dir, color_fn=self._color_np,
                           cfg=self.exporter_cfg)
