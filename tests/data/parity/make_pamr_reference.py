"""Make ``astronaut__voc20__pamr.npz``: the authors' PAMR applied to the engine's own logits.

Not a test (run by hand once; see README.md, "PAMR reference"). The team's copy of the
authors' PAMR module (``reference_pamr.py``, from visinf/1-stage-wseg, Apache-2.0) is NOT
part of this repository: pass the folder that holds it::

    python tests/data/parity/make_pamr_reference.py ../shared/parity

Steps, as the authors' ``CASS_segmentor.predict`` does with ``pamr_steps=10,
pamr_stride=(8, 16)``:

1. the engine (``reference_quirks=True``, voc20 preset, the reference's head pairing
   imposed) produces its merged slide-window logits on the resized image (the reference
   run's own logits were not saved; the engine's match them within the parity targets);
2. logits and the model input (``image_resized`` of the inputs file, normalised with
   mmsegmentation's CLIP statistics) are resized bilinearly (``align_corners=False``) to
   the original 512 x 512;
3. ``PAMR(10, dilations=[8, 16])(image, logits)``;
4. x 40, softmax over the 30 queries, max over each class's synonyms, argmax (voc20 has
   no ``prob_thd``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for _parity_data

MMSEG_MEAN = (122.771, 116.746, 104.094)
MMSEG_STD = (68.501, 66.632, 70.323)


def engine_logits(image: np.ndarray, ref: dict) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The engine's merged ``(h, w, Q)`` logits and the query range of each class."""
    import open_clip
    import timm

    import napari_cass.engine._segmenter as segmenter_module
    from _parity_data import seeded_weights
    from napari_cass.engine import Segmenter, benchmark_classes
    from napari_cass.engine.testing import EngineProbe

    sw = seeded_weights()
    clip = open_clip.create_model("ViT-B-16", pretrained=None, quick_gelu=True)
    clip.load_state_dict(sw.clip_vit_b16_state_dict(), strict=True)
    vfm = timm.create_model("vit_base_patch8_224.dino", pretrained=False, num_classes=0)
    vfm.load_state_dict(sw.dino_vitb8_state_dict(), strict=True)
    seg = Segmenter.from_models(
        clip, open_clip.get_tokenizer("ViT-B-16"), vfm, preset="voc20", reference_quirks=True, device="cpu"
    )
    seg.probe = EngineProbe(record=False, head_pairings=list(zip(ref["win_row_ind"], ref["win_col_ind"])))
    seen = {}
    original = segmenter_module.finish_logits

    def capture(logits, size, groups, **kwargs):
        seen["logits"], seen["groups"] = logits.clone(), list(groups)
        return original(logits, size, groups, **kwargs)

    segmenter_module.finish_logits = capture
    try:
        seg.segment(image, benchmark_classes("voc20"))
    finally:
        segmenter_module.finish_logits = original
    return seen["logits"], seen["groups"]


def main(reference_dir: str) -> None:
    spec = importlib.util.spec_from_file_location("reference_pamr", Path(reference_dir) / "reference_pamr.py")
    reference_pamr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference_pamr)
    inputs = np.load(HERE / "inputs_astronaut.npz")
    ref = dict(np.load(HERE / "astronaut__voc20__exact.npz"))
    image = inputs["image_orig"]
    size = image.shape[:2]
    logits, groups = engine_logits(image, ref)
    with torch.no_grad():
        seg_logits = F.interpolate(logits.permute(2, 0, 1)[None], size=size, mode="bilinear", align_corners=False)
        px = torch.from_numpy(inputs["image_resized"].astype(np.float32)).permute(2, 0, 1)[None]
        px = (px - torch.tensor(MMSEG_MEAN)[:, None, None]) / torch.tensor(MMSEG_STD)[:, None, None]
        img = F.interpolate(px, size=size, mode="bilinear", align_corners=False)
        refined = reference_pamr.PAMR(10, dilations=[8, 16])(img, seg_logits)[0]
        soft = torch.softmax(refined * 40.0, dim=0)
        probs = torch.stack([soft[a:b].max(dim=0).values for a, b in groups])
    labels = probs.argmax(dim=0).numpy().astype(np.uint8)
    np.savez_compressed(
        HERE / "astronaut__voc20__pamr.npz",
        probs_s4=probs[:, ::4, ::4].numpy().astype(np.float16),
        labels=labels,
        meta_json=np.array(
            '{"pamr_steps": 10, "pamr_stride": [8, 16], "preset": "voc20", "logits": "engine, reference_quirks, '
            'reference pairing", "reference": "reference_pamr.py (visinf/1-stage-wseg, Apache-2.0)"}'
        ),
    )
    changed = float((labels != ref["labels"]).mean())
    print(f"wrote astronaut__voc20__pamr.npz: PAMR changed {changed:.1%} of the labels")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
