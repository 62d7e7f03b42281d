"""What an evaluation run leaves behind: results.json, results.md, a chart, overlays.

Everything is drawn with Pillow (no plotting library) and written atomically.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io import atomic_write, label_palette, overlay_labels

__all__ = [
    "draw_iou_chart",
    "draw_side_by_side",
    "format_markdown",
    "format_summary_table",
    "write_json",
    "write_text",
]


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write JSON atomically (run outputs are regenerated on every resume)."""
    with atomic_write(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return path


def write_text(path: Path, text: str) -> Path:
    with atomic_write(path, overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def format_summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table: one row per run, our mIoU beside the paper's."""
    lines = [
        "| Dataset | Method | Ablation | Images | mIoU (ours) | mIoU (paper) | pAcc (ours) | "
        "pAcc (paper) | Paper source |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['method']} | {r.get('ablation_label') or '-'} | "
            f"{r['num_images']}/{r['num_images_total']} | {_fmt(r['miou'])} | "
            f"{_fmt(r['paper']['miou'])} | {_fmt(r['pacc'])} | not listed | {r['paper']['source']} |"
        )
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    """The per-run report: settings, summary beside the paper, per-class IoU table."""
    warn = ""
    if result["models"].get("random_weights"):
        warn = (
            "\n> **Random weights**: this run used random model weights; "
            "its numbers are meaningless (testing only).\n"
        )
    if result["num_images"] < result["num_images_total"]:
        warn += (
            f"\n> Partial run: {result['num_images']} of {result['num_images_total']} images; "
            "not comparable with the paper.\n"
        )
    if result.get("skipped"):
        warn += f"\n> Skipped {len(result['skipped'])} image(s) with a bad mask or image (--skip-bad):\n"
        warn += "".join(f">  - `{s['file']}`: {s['reason']}\n" for s in result["skipped"][:20])
        if len(result["skipped"]) > 20:
            warn += f">  - ... and {len(result['skipped']) - 20} more (see results.json)\n"
    opts = ", ".join(f"{k}={v}" for k, v in sorted(result["options"].items())) or "defaults"
    lines = [
        f"# napari-cass evaluation: {result['dataset']} ({result['dataset_title']})",
        warn,
        f"- Method: `{result['method']}`, preset: `{result['preset']}`, options: {opts}",
        f"- Models: CLIP `{result['models']['clip']}`, VFM `{result['models']['vfm']}`",
        f"- Device: `{result['device']}`; {_fmt(result['seconds_per_image'], 2)} s per image",
        f"- Run signature: `{result['signature_hash']}`",
        "",
        format_summary_table([result]),
        "",
        "pAcc of the paper (Table 2) is not listed in this project's contract.",
        "",
        "## Per-class IoU",
        "",
        "| # | Class | IoU (%) | Acc (%) | GT pixels | Predicted pixels |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for i, c in enumerate(result["per_class"]):
        lines.append(
            f"| {i} | {c['name']} | {_fmt(c['iou'])} | {_fmt(c['acc'])} | "
            f"{c['label_pixels']} | {c['pred_pixels']} |"
        )
    if result.get("worst"):
        lines += ["", "## Worst images (per-image mIoU)", ""]
        for w in result["worst"]:
            lines.append(f"- [`{w['image_id']}`]({w['file']}): mIoU {_fmt(w['miou'])}")
    return "\n".join(lines) + "\n"


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed size
        return ImageFont.load_default()


def draw_iou_chart(
    path: Path, names: Sequence[str], iou: np.ndarray, title: str, paper_miou: float | None = None
) -> Path:
    """Horizontal bar chart of per-class IoU (best first; absent classes last, "n/a")."""
    iou = np.asarray(iou, dtype=np.float64)
    order = sorted(range(len(names)), key=lambda i: (math.isnan(iou[i]), -np.nan_to_num(iou[i])))
    font = _font(12)
    row_h, label_w, bar_w, top, pad = 16, 210, 560, 48, 10
    width = label_w + bar_w + 70
    height = top + row_h * len(names) + pad
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((pad, 8), title, fill="black", font=_font(14))
    # Grid at 0, 25, 50, 75, 100 %.
    for pct in (0, 25, 50, 75, 100):
        x = label_w + bar_w * pct / 100
        draw.line([(x, top - 6), (x, height - pad)], fill=(220, 220, 220))
        draw.text((x - 8, top - 20), f"{pct}", fill=(90, 90, 90), font=font)
    if paper_miou is not None:
        x = label_w + bar_w * paper_miou / 100
        draw.line([(x, top - 6), (x, height - pad)], fill=(200, 40, 40), width=2)
    palette = label_palette(max(len(names), 1))  # the overlays' colours
    for row, i in enumerate(order):
        y = top + row * row_h
        name = names[i] if len(names[i]) <= 30 else names[i][:29] + "…"
        draw.text((pad, y + 1), name, fill="black", font=font)
        if math.isnan(iou[i]):
            draw.text((label_w + 4, y + 1), "n/a (absent)", fill=(140, 140, 140), font=font)
            continue
        length = bar_w * float(iou[i])
        colour = tuple(int(c) for c in palette[i])
        draw.rectangle([label_w, y + 2, label_w + max(length, 1), y + row_h - 3], fill=colour,
                       outline=(60, 60, 60))
        draw.text((label_w + length + 4, y + 1), f"{100 * iou[i]:.1f}", fill="black", font=font)
    with atomic_write(path, overwrite=True) as tmp:
        img.save(tmp, format="PNG")
    return path


def draw_side_by_side(
    path: Path,
    image: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray,
    num_classes: int,
    *,
    has_background: bool,
    caption: str,
    ignore_index: int = 255,
    max_panel: int = 480,
    min_panel: int = 200,
) -> Path:
    """image | prediction | ground truth, class colours blended; ignored GT pixels white.

    Panels are scaled (nearest neighbour) so their long side lies within
    ``[min_panel, max_panel]``: big images stay light, tiny ones stay visible.
    """
    palette = np.vstack([label_palette(num_classes), np.array([[255, 255, 255]], np.uint8)])
    gt_vis = np.where(gt == ignore_index, num_classes, np.clip(gt, 0, num_classes)).astype(np.int64)
    panels = [
        np.asarray(image, dtype=np.uint8),
        overlay_labels(image, pred.astype(np.int64), palette, alpha=0.6, skip_zero=has_background),
        overlay_labels(image, gt_vis, palette, alpha=0.6, skip_zero=has_background),
    ]
    h, w = panels[0].shape[:2]
    longest = max(h, w)
    scale = max_panel / longest if longest > max_panel else max(1.0, min_panel / longest)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    pil = [Image.fromarray(p).resize(size, Image.Resampling.NEAREST) for p in panels]
    header, gap = 38, 4
    canvas = Image.new("RGB", (3 * size[0] + 2 * gap, size[1] + header), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    draw.text((2, 3), caption, fill="black", font=font)
    for k, (p, label) in enumerate(zip(pil, ("image", "prediction", "ground truth (white: ignored)"))):
        x = k * (size[0] + gap)
        canvas.paste(p, (x, header))
        draw.text((x + 2, 20), label, fill="black", font=font)
    with atomic_write(path, overwrite=True) as tmp:
        canvas.save(tmp, format="PNG")
    return path
