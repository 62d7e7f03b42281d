"""Dataset presets of CASS (spec section 6), as plain frozen data."""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["Preset", "PRESETS", "DEFAULT_PRESET", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """Every number CASS needs besides the models.

    Parameters
    ----------
    name : str
        Registry name.
    beta : float
        Weight of the presence prior in Eq. 9.
    alpha : float
        Weight of the object mean vector in Eq. 8.
    cluster_threshold : float
        Ward distance threshold ``h`` for clustering the text embeddings.
    prob_thd : float
        Pixels whose winning probability is below this get class 0 (background).
        ``0`` means the preset has no background rule.
    mode : str
        ``"slide"`` (sliding window) or ``"whole"`` (one pass on the whole image).
    short_side : int
        Short side of the resized image fed to the models.
    eigenscaling : bool
        Dynamic eigenscaling (Eq. 6) of the low-rank VFM graph.
    prior_from_crop : bool
        Take the presence prior from each crop's own CLS token instead of the
        whole image (the Cityscapes preset).
    class_list : str or None
        Name of the benchmark class list this preset belongs to.
    refine : str
        Boundary refinement before the argmax: ``"none"`` or ``"pamr"`` (off in the
        benchmark presets, so their numbers stay comparable with the paper's tables).
    """

    name: str
    beta: float
    alpha: float
    cluster_threshold: float
    prob_thd: float = 0.0
    mode: str = "slide"
    short_side: int = 336
    long_side_max: int = 2048
    eigenscaling: bool = True
    prior_from_crop: bool = False
    class_list: str | None = None
    logit_scale: float = 40.0
    crop: int = 224
    stride: int = 112
    sigma: float = 5.0
    lam: float = 10.0
    k_eigen: int = 20
    rank: int = 10
    refine: str = "none"

    def with_(self, **changes) -> Preset:
        """Copy with some fields changed (an ablation or a user setting)."""
        return replace(self, **changes)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("voc20", 0.40, 0.02, 0.10, 0.0, "slide", 336, eigenscaling=False, class_list="voc20"),
        Preset("voc21", 0.10, 0.03, 0.10, 0.1, "whole", 336, class_list="voc21"),
        Preset("context59", 0.25, 0.04, 0.09, 0.0, "slide", 336, class_list="context59"),
        Preset("context60", 0.25, 0.04, 0.09, 0.1, "slide", 336, class_list="context60"),
        Preset("coco_object", 0.25, 0.01, 0.10, 0.1, "slide", 336, class_list="coco_object"),
        Preset("coco_stuff", 0.20, 0.02, 0.02, 0.0, "slide", 336, class_list="coco_stuff"),
        Preset("ade20k", 0.30, 0.05, 0.06, 0.0, "slide", 336, class_list="ade20k"),
        Preset(
            "cityscapes", 0.10, 0.03, 0.14, 0.0, "slide", 560,
            eigenscaling=False, prior_from_crop=True, class_list="cityscapes",
        ),
    )
}
# The interactive default: general scenes, no background rule.
PRESETS["interactive"] = PRESETS["context59"].with_(name="interactive", class_list=None)
DEFAULT_PRESET = "interactive"


def get_preset(preset: str | Preset) -> Preset:
    """Look a preset up by name (a :class:`Preset` passes through)."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(
            f"Unknown preset {preset!r}. Choose one of: {', '.join(PRESETS)}."
        ) from None
