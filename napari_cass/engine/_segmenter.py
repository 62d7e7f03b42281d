"""The Segmenter: image + class prompts -> labels, composing the engine's pieces."""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import fields
from typing import Sequence

import numpy as np
import torch

from ._backbones import ClipVision, Vfm
from ._device import resolve_device
from ._encoder_inputs import clip_input, float_tokens, vfm_input
from ._finish import finish_logits, query_groups, release_freed_heap
from ._image import RgbImage, load_rgb, pad_pixels, padded_size, resize_image, resized_size
from ._logits import VisionFeatures, merged_logits
from ._pamr import check_refine
from ._pamr_finish import guide_for
from ._methods import METHODS, NEEDS_VFM, CassOptions, MethodInputs, patch_features
from ._presence import TextEncoder, cluster_queries
from ._presets import DEFAULT_PRESET, Preset, get_preset
from ._precision import cpu_autocast
from ._probe import EngineProbe
from ._prompts import ClassesLike, normalize_classes, with_background
from ._progress import CancelCallback, ProgressCallback, Reporter, StageTimer
from ._result import SegmentationResult
from ._spectral import gaussian_bias
from ._vision_cache import VisionCache
from ._windows import window_coords

__all__ = ["Segmenter", "ProgressCallback", "CancelCallback"]

#: Progress steps reported through the full-resolution stage (labels at the image's size).
MERGE_STEPS = 8


class Segmenter:
    """Open-vocabulary semantic segmentation with CASS (or a baseline in the same code path).

    Build it with :meth:`from_pretrained` (real weights) or :meth:`from_models` (any
    open_clip CLIP and timm ViT, e.g. with random weights in tests), then call
    :meth:`segment`. The vision side of the last few images is cached, so a new
    class list on the same image only re-runs the text side.

    Parameters
    ----------
    clip_model : torch.nn.Module
        An open_clip CLIP model.
    tokenizer : callable
        open_clip tokenizer: list of str -> ``(n, 77)`` token ids.
    vfm_model : torch.nn.Module or None
        A timm ViT (DINO); needed by ``cass`` and ``proxyclip``.
    method : str
        One of :data:`METHODS`.
    preset : str or Preset
        Dataset preset (spec section 6); ``"interactive"`` by default.
    device : str
        ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
    reference_quirks : bool
        Reproduce the reference implementation's numerics (parity checks only).
    batch_size : int, optional
        Crops per forward pass (default 1 on the CPU, 8 on a GPU).
    threads : int, optional
        CPU threads for PyTorch.
    cache_size : int
        Images whose vision side is kept.
    amp : bool
        Autocast the encoders to float16/bfloat16 on CUDA; on the CPU, bfloat16 for each
        encoder that a one-time probe measures faster (``NAPARI_CASS_PRECISION=fp32``
        forces float32). False: float32 everywhere.
    refine : str, optional
        Boundary refinement before the argmax: ``"pamr"`` (PAMR, as in the authors'
        code: 10 iterations, dilations 8 and 16, guided by the model input resized back
        to the image's size) or ``"none"``. ``None``:
        the preset's :attr:`Preset.refine`. :meth:`segment` can override it per call.
    **options
        Ablations: ``vfm_graph``, ``matching``, ``low_rank``, ``eigenscaling``,
        ``adaptive_rank``, ``pairing`` (see :class:`CassOptions`),
        ``presence_prior`` (Eq. 9's prior) and ``text_adjustment`` (Eq. 8).
    """

    def __init__(
        self,
        clip_model: torch.nn.Module,
        tokenizer,
        vfm_model: torch.nn.Module | None = None,
        *,
        method: str = "cass",
        preset: str | Preset = DEFAULT_PRESET,
        device: str | torch.device = "cpu",
        reference_quirks: bool = False,
        batch_size: int | None = None,
        threads: int | None = None,
        cache_size: int = 4,
        amp: bool = True,
        presence_prior: bool = True,
        text_adjustment: bool = True,
        refine: str | None = None,
        **options,
    ):
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
        known = {f.name for f in fields(CassOptions)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"Unknown option(s) {sorted(unknown)}; known: {sorted(known)}.")
        self.options = CassOptions(**options)
        if method in NEEDS_VFM and vfm_model is None and (method != "cass" or self.options.vfm_graph):
            raise ValueError(f"Method {method!r} needs a VFM (DINO) model; pass vfm_model.")
        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)
        self.method = method
        self.preset = get_preset(preset)
        self.reference_quirks = bool(reference_quirks)
        self.presence_prior = presence_prior
        self.text_adjustment = text_adjustment
        # Parity runs one crop at a time, like the reference (GEMM blocking can change rounding).
        self.batch_size = 1 if self.reference_quirks else int(batch_size or (1 if self.device.type == "cpu" else 8))
        self.amp = amp
        self.refine = None if refine is None else check_refine(refine)
        self.clip_model = clip_model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.vfm_model = vfm_model.to(self.device).eval() if vfm_model is not None else None
        self._clip = ClipVision(self.clip_model.visual, self.reference_quirks)
        self._vfm = Vfm(self.vfm_model, self.reference_quirks) if self.vfm_model is not None else None
        self._text = TextEncoder(self.clip_model, tokenizer, self.device)
        self._cache = VisionCache(cache_size)
        self._clusters: dict[tuple, np.ndarray] = {}
        self._omega: dict[tuple[int, int], torch.Tensor] = {}
        # Testing hook: an EngineProbe (napari_cass.engine.testing) records intermediates
        # and may impose the head matching; while set, the vision cache is bypassed.
        self.probe: EngineProbe | None = None
        self.model_names: dict[str, str | None] = {}  # filled by from_pretrained

    # ------------------------------------------------------------------ building
    @classmethod
    def from_models(cls, clip_model, tokenizer, vfm_model=None, **kwargs) -> Segmenter:
        """Wrap already-built models (any weights). Same keywords as the constructor."""
        return cls(clip_model, tokenizer, vfm_model, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        clip: str = "ViT-B-16",
        clip_weights: str = "openai",
        vfm: str = "dino_vitb8",
        vfm_weights: str = "pretrained",
        *,
        method: str = "cass",
        preset: str | Preset = DEFAULT_PRESET,
        device: str = "auto",
        progress: ProgressCallback | None = None,
        offline: bool | None = None,
        **kwargs,
    ) -> Segmenter:
        """Build the models by name and load their weights.

        Weights come from an explicit file path, else the napari-cass cache folder
        (``NAPARI_CASS_CACHE``), else the Hugging Face hub. Offline, a missing file
        raises :class:`~napari_cass.engine.WeightsNotFoundError` naming the files
        expected and where to put them. ``"random"`` weights are for tests only.
        """
        from ._weights import build_clip, build_vfm, ensure_weights

        dev = resolve_device(device)
        # Every model looked up locally before any download: one error names all missing weights.
        ensure_weights([("clip", clip, clip_weights)]
                       + ([("vfm", vfm, vfm_weights)] if method in NEEDS_VFM else []),
                       progress=progress, offline=offline)
        clip_model, tokenizer = build_clip(clip, clip_weights, progress=progress, offline=offline)
        vfm_model = None
        if method in NEEDS_VFM:
            vfm_model = build_vfm(vfm, vfm_weights, progress=progress, offline=offline)
        seg = cls(clip_model, tokenizer, vfm_model, method=method, preset=preset, device=dev, **kwargs)
        seg.model_names = {"clip": clip, "clip_weights": str(clip_weights), "vfm": vfm if vfm_model else None}
        return seg

    # ------------------------------------------------------------------ settings
    def set_preset(self, preset: str | Preset) -> None:
        """Switch preset; cached vision features stay valid when only text-side numbers change."""
        self.preset = get_preset(preset)

    def refine_mode(self, refine: str | None = None) -> str:
        """``"pamr"`` or ``"none"``: ``refine`` if given, else the Segmenter's, else the preset's."""
        return check_refine(next((r for r in (refine, self.refine, self.preset.refine) if r is not None), "none"))

    def set_method(self, method: str) -> None:
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(METHODS)}.")
        if method in NEEDS_VFM and self.vfm_model is None:
            raise ValueError(f"Method {method!r} needs a VFM (DINO) model; rebuild the Segmenter with one.")
        self.method = method

    def clear_cache(self) -> None:
        """Forget cached image features and text embeddings."""
        self._cache.clear()
        self._clusters.clear()
        self._text.clear()

    # ------------------------------------------------------------------ public API
    def segment(
        self,
        image,
        classes: ClassesLike,
        progress: ProgressCallback | None = None,
        cancel: CancelCallback | None = None,
        *,
        background: str | Sequence[str] | None = None,
        return_probabilities: bool = False,
        probability_stride: int = 1,
        refine: str | None = None,
    ) -> SegmentationResult:
        """Segment ``image`` into ``classes``.

        Labels and the winning probability are computed a band of rows at a time
        from the low-resolution logits, so memory does not grow with the number of
        classes times the image size; the full class probabilities are only built
        when asked for.

        Parameters
        ----------
        image : array
            ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``; uint8, uint16 or float.
        classes : str or list
            ``"person, car, road"``; or a list whose items are a name, a list of
            synonyms (first = display name) or a :class:`ClassPrompt`.
        progress : callable, optional
            ``progress(done, total, message)``.
        cancel : callable, optional
            Polled between crops; returning True raises :class:`SegmentationCancelled`.
        background : str or list of str, optional
            Words describing the background (a list, or one string separated by commas
            or ``|``); they become class 0, "background". A word that is also a class or
            one of its words is refused (ValueError), as the CLI and the widget refuse it.
        return_probabilities : bool
            Also fill :attr:`SegmentationResult.probabilities`, ``(classes, H, W)``
            float32 (4 bytes per class and pixel: 90 MB per class for 6000 x 4000).
        probability_stride : int
            With ``return_probabilities``, keep every ``stride``-th row and column
            (the ``[::stride, ::stride]`` subsampling of the full array).
        refine : str, optional
            ``"pamr"`` or ``"none"`` for this call (default: :meth:`refine_mode`).

        Raises
        ------
        ValueError
            For an image or class list the engine cannot take (the message says why).
        FloatingPointError
            If a NaN or infinity appeared inside the engine (never returned silently).
        """
        try:
            return self._segment(
                image, classes, progress, cancel, background, return_probabilities, probability_stride,
                self.refine_mode(refine),
            )
        except torch.cuda.OutOfMemoryError:
            self._cache.clear()
            torch.cuda.empty_cache()
            shape = getattr(image, "shape", "?")
            raise torch.cuda.OutOfMemoryError(
                f"Out of GPU memory on {self.device} while segmenting an image of shape {shape} "
                f"(batch of {self.batch_size} crops). Try batch_size=1, a smaller backbone "
                "(ViT-B-32 / dino_vitb16), a smaller image, or device='cpu'."
            ) from None

    def _segment(
        self, image, classes, progress, cancel, background, return_probabilities, probability_stride, refine="none"
    ) -> SegmentationResult:
        # Background words that are also a class (or a class's word) are refused, with the
        # message the CLI and the widget give; a list that already starts with a
        # "background" ClassPrompt (the benchmarks, COCO-Object's "bed") is taken as given.
        prompts = with_background(classes, background) if background else normalize_classes(classes)
        has_background = prompts[0].name.casefold() == "background"
        timer = StageTimer(self.device)
        start = time.perf_counter()
        if self.probe is not None:  # a probed run computes (and records) every window
            self.probe.reset()
        key = VisionCache.key(image, self._vision_key()) if self.probe is None else None
        vision = self._cache.get(key)
        from_cache = vision is not None
        if vision is None:
            # Only a cache miss pays for validation and float conversion: a hit means
            # these exact pixels were validated before.
            rgb = load_rgb(image)
            report = Reporter(progress, cancel, 2 + MERGE_STEPS + self._vision_steps(rgb.shape[:2]))
            vision = self._vision(rgb, report)
            self._cache.put(key, vision)
            release_freed_heap()  # the encoders' freed temporaries, before the text tower's
        else:
            report = Reporter(progress, cancel, 2 + MERGE_STEPS)
        report.check()
        with torch.inference_mode():
            with timer("text"):
                queries = [q for p in prompts for q in p.queries]
                text = self._text.encode(queries)
                clusters = self._cluster(queries, text)
            report.step("text embeddings")
            with timer("similarity"):
                logits = self._logits(vision, text, clusters)
            with timer("merge"):
                thd = self.preset.prob_thd if (has_background or self.reference_quirks) else 0.0
                out = finish_logits(
                    logits, vision.size, query_groups([len(pr.queries) for pr in prompts]),
                    logit_scale=self.preset.logit_scale, prob_thd=thd,
                    return_probabilities=return_probabilities, probability_stride=probability_stride,
                    on_band=report.bands(MERGE_STEPS, "refined labels" if refine == "pamr" else "full-resolution labels"),
                    guide=None if refine != "pamr" else guide_for(
                        image, vision.resized, vision.size, self.reference_quirks, self.device
                    ),
                )
            report.step("done")
        timings = {} if from_cache else dict(vision.timings)
        timings.update(timer.times)
        timings["total"] = time.perf_counter() - start
        return SegmentationResult(
            labels=out.labels,
            probabilities=out.probabilities,
            confidence=out.confidence,
            classes=prompts,
            has_background=has_background,
            timings=timings,
            from_cache=from_cache,
        )

    # ------------------------------------------------------------------ vision side
    def _vision_key(self) -> tuple:
        p = self.preset
        return (
            self.method, p.mode, p.short_side, p.long_side_max, p.crop, p.stride, p.sigma, p.lam,
            p.k_eigen, p.rank, self._eigenscaling(), p.prior_from_crop, self.options,
            self.reference_quirks, id(self.clip_model), id(self.vfm_model),
        )

    def _eigenscaling(self) -> bool:
        es = self.options.eigenscaling
        return self.preset.eigenscaling if es is None else bool(es)

    def _sizes(self, size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
        """Resized size (short-side rule) and the padded size the encoders run on."""
        resized = resized_size(*size, self.preset.short_side, self.preset.long_side_max)
        patches = [*self._clip.patch, *(self._vfm.patch if self._vfm is not None else ())]
        return resized, padded_size(*resized, max(patches))

    def _vision_steps(self, size: tuple[int, int]) -> int:
        h, w = self._sizes(size)[1]
        if self.preset.mode == "whole":
            return 1
        n = len(window_coords(h, w, self.preset.crop, self.preset.stride))
        return -(-n // self.batch_size) + 1

    def _autocast(self, encoder: str = "clip"):
        """Mixed precision of one encoder ("clip" or "vfm"); float32 under reference_quirks."""
        if self.amp and self.device.type == "cuda" and not self.reference_quirks:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        if self.amp and self.device.type == "cpu" and not self.reference_quirks:
            # bfloat16 only for an encoder a one-time probe measures faster (_precision.py)
            if encoder == "vfm":
                return cpu_autocast("vfm", lambda x: self._vfm.last_keys(x), self.vfm_model, self.batch_size)
            return cpu_autocast("clip", lambda x: self._clip.tokens_before_last(x), self.clip_model, self.batch_size)
        return nullcontext()

    def _normalise_clip(self, img: torch.Tensor) -> torch.Tensor:
        """``(3, h, w)`` 0..255 pixels -> CLIP input."""
        return clip_input(img, self.reference_quirks)

    def _vfm_input(self, pixels: torch.Tensor, clip_in: torch.Tensor) -> torch.Tensor:
        """VFM input for a batch of crops: ``pixels`` 0..255 and their CLIP-normalised form."""
        return vfm_input(pixels, clip_in, self._vfm.patch, self.reference_quirks, self.probe)

    def _omega_for(self, grid: tuple[int, int]) -> torch.Tensor:
        key = (grid, self.preset.sigma)
        if key not in self._omega:
            self._omega[key] = gaussian_bias(grid, self.preset.sigma, device=self.device)
        return self._omega[key]

    @torch.inference_mode()
    def _vision(self, rgb: RgbImage, report: Reporter) -> VisionFeatures:
        p = self.preset
        timer = StageTimer(self.device)
        with timer("resize"):
            size = rgb.shape[:2]
            resized, padded = self._sizes(size)
            pixels = resize_image(rgb, resized, self.reference_quirks).to(self.device)
            pixels = pad_pixels(pixels, padded)
            clip_in = self._normalise_clip(pixels)
        windows = [(0, padded[0], 0, padded[1])] if p.mode == "whole" else window_coords(
            padded[0], padded[1], p.crop, p.stride
        )
        image_cls = None
        if not p.prior_from_crop and p.mode != "whole":
            with timer("image_embedding"), self._autocast():
                tokens = self._clip.tokens_before_last(clip_in[None])
                image_cls = self._clip.cls_embedding(float_tokens(tokens))[0].float()
            report.step("whole-image embedding")
        feats, crop_cls, grid = [], [], None
        for start in range(0, len(windows), self.batch_size):
            report.check()
            batch = windows[start : start + self.batch_size]
            crops = torch.stack([clip_in[:, y1:y2, x1:x2] for (y1, y2, x1, x2) in batch])
            crop_px = torch.stack([pixels[:, y1:y2, x1:x2] for (y1, y2, x1, x2) in batch])
            with timer("clip_encoder"), self._autocast():
                tokens = float_tokens(self._clip.tokens_before_last(crops))
            inputs = MethodInputs(tokens=tokens, omega=self._omega_for(tokens.grid))
            inputs.probe = self.probe
            if self._vfm is not None and (self.method == "proxyclip" or (self.method == "cass" and self.options.vfm_graph)):
                with timer("vfm_encoder"), self._autocast("vfm"):
                    vfm_in = self._vfm_input(crop_px, crops)
                    if self.method == "proxyclip":
                        vt, inputs.vfm_grid = self._vfm.final_patch_tokens(vfm_in)
                        inputs.vfm_tokens = vt.float()
                    else:
                        vk, inputs.vfm_grid = self._vfm.last_keys(vfm_in)
                        inputs.vfm_keys = vk.float()
            with timer("attention"):
                f, grid = patch_features(
                    self.method, self._clip, inputs, k_eigen=p.k_eigen, rank=p.rank, lam=p.lam,
                    eigenscaling=self._eigenscaling(), options=self.options,
                )
            feats.append(f.float())
            if p.prior_from_crop or p.mode == "whole":
                with timer("image_embedding"):
                    cls = self._clip.cls_embedding(tokens).float()
                crop_cls.append(cls)
            report.step(f"crop {min(start + len(batch), len(windows))}/{len(windows)}")
        crop_cls_t = torch.cat(crop_cls) if crop_cls else None
        if p.mode == "whole" and not p.prior_from_crop:
            image_cls, crop_cls_t = crop_cls_t[0], None
        timer.times["vision"] = sum(timer.times.values())
        return VisionFeatures(
            size=tuple(size), resized=tuple(resized), padded=tuple(padded), windows=windows, grid=grid,
            features=torch.cat(feats), crop_cls=crop_cls_t, image_cls=image_cls, timings=timer.times,
        )

    # ------------------------------------------------------------------ text side
    def _cluster(self, queries: list[str], text: torch.Tensor) -> np.ndarray:
        key = (tuple(queries), self.preset.cluster_threshold)
        if key not in self._clusters:
            self._clusters[key] = cluster_queries(text, self.preset.cluster_threshold)
            if len(self._clusters) > 64:
                self._clusters.pop(next(iter(self._clusters)))
        return self._clusters[key]

    def _logits(self, vision: VisionFeatures, text: torch.Tensor, clusters: np.ndarray) -> torch.Tensor:
        """Merged patch-query logits ``(h, w, Q)`` on the resized image (Eqs. 8-9, windows)."""
        p = self.preset
        return merged_logits(
            vision, text, clusters, beta=p.beta if self.presence_prior else 0.0,
            alpha=p.alpha if self.text_adjustment else 0.0, prior_from_crop=p.prior_from_crop, probe=self.probe,
        )
