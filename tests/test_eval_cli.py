"""The ``eval`` command end to end: runs, resume, reports, errors.

Most tests use a deterministic stand-in segmenter (label = red channel modulo the
number of classes) so the numbers can be checked exactly; one test runs the real
engine with tiny random-weight models.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_cass.engine import (
    ClassPrompt,
    SegmentationResult,
    Segmenter,
    get_preset,
    normalize_classes,
)
from napari_cass.evaluation import _cli, add_eval_parser, run_eval
from napari_cass.io import read_label_image

H, W = 24, 32


def make_voc(base: Path, n: int = 3, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny PASCAL VOC 2012 layout; returns id -> (image, raw ground truth)."""
    voc = base / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for k in range(n):
        image_id = f"2007_{k:06d}"
        image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        gt = rng.integers(0, 21, (H, W)).astype(np.uint8)
        gt[:2] = 255
        # PNG, not JPEG: the stand-in segmenter must see exactly these pixels
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", format="PNG")
        Image.fromarray(gt).save(voc / "SegmentationClass" / f"{image_id}.png")
        out[image_id] = (image, gt)
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(out) + "\n")
    return out


class FakeSegmenter:
    """Deterministic stand-in: label = red channel modulo the number of classes."""

    device = "cpu"

    def __init__(self) -> None:
        self.calls = 0

    def segment(self, image, classes, progress=None, cancel=None, *, background=None):
        self.calls += 1
        prompts = normalize_classes(classes)
        if background:
            prompts = [ClassPrompt(name="background", queries=tuple(background))] + prompts
        labels = (image[..., 0].astype(np.int32) % len(prompts)).astype(np.int32)
        probs = np.zeros((len(prompts), *labels.shape), np.float32)
        return SegmentationResult(labels=labels, probabilities=probs, classes=prompts,
                                  has_background=bool(background))


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="napari-cass")
    sub = parser.add_subparsers(dest="command", required=True)
    eval_parser = add_eval_parser(sub)
    assert isinstance(eval_parser, argparse.ArgumentParser)
    args = parser.parse_args(argv)
    assert args.func is run_eval
    return args


@pytest.fixture()
def fake(monkeypatch: pytest.MonkeyPatch) -> dict:
    seen: dict = {"builds": 0, "args": [], "seg": FakeSegmenter()}

    def build(args: argparse.Namespace) -> FakeSegmenter:
        seen["builds"] += 1
        seen["args"].append(args)
        return seen["seg"]

    monkeypatch.setattr(_cli, "_build_segmenter", build)
    return seen


def _direct_miou(pairs: list[tuple[np.ndarray, np.ndarray]], c: int, reduce: bool) -> float:
    p = np.concatenate([a.ravel() for a, _ in pairs]).astype(np.int64)
    g = np.concatenate([b.ravel() for _, b in pairs]).astype(np.int64)
    if reduce:
        g = np.where((g == 0) | (g == 255), 255, g - 1)
    valid = g != 255
    ious = []
    for k in range(c):
        u = np.sum(((p == k) | (g == k)) & valid)
        if u:
            ious.append(np.sum((p == k) & (g == k) & valid) / u)
    return float(np.mean(ious))


def test_run_resume_limit_and_reports(tmp_path: Path, fake: dict, capsys) -> None:
    data = make_voc(tmp_path / "data", n=3)
    out = tmp_path / "out"
    base = ["eval", "--dataset", "voc21", "--root", str(tmp_path / "data"), "--out", str(out),
            "--no-progress", "--worst", "2"]
    assert run_eval(_parse(base + ["--limit", "2"])) == 0
    assert fake["builds"] == 1 and fake["seg"].calls == 2
    assert fake["args"][0].run_preset == "voc21" and fake["args"][0].run_options == {}
    run_dirs = list(out.iterdir())
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["num_images"] == 2 and res["num_images_total"] == 3
    assert res["paper"]["miou"] == 65.8 and res["paper"]["source"] == "Table 1"
    assert len((run_dir / "per_image.jsonl").read_text().splitlines()) == 2
    printed = capsys.readouterr().out
    assert "65.8" in printed and "mIoU" in printed

    # Second run without --limit: only the third image is new.
    assert run_eval(_parse(base)) == 0
    assert fake["builds"] == 2 and fake["seg"].calls == 3
    res = json.loads((run_dir / "results.json").read_text())
    assert res["num_images"] == 3 and res["num_images_new"] == 1 and res["num_images_cached"] == 2

    # The numbers equal a direct computation over the saved predictions.
    pairs = []
    for image_id, (image, gt) in data.items():
        pred = read_label_image(run_dir / "predictions" / f"{image_id}.png")
        np.testing.assert_array_equal(pred, image[..., 0] % 21)
        pairs.append((pred, gt))
    assert res["miou"] == pytest.approx(100 * _direct_miou(pairs, 21, reduce=False), abs=1e-3)
    assert len(res["per_class"]) == 21 and res["per_class"][0]["name"] == "background"

    # Third run: everything cached, no model is even built; same numbers.
    assert run_eval(_parse(base)) == 0
    assert fake["builds"] == 2 and fake["seg"].calls == 3
    again = json.loads((run_dir / "results.json").read_text())
    assert again["miou"] == res["miou"] and again["num_images_cached"] == 3

    # A line torn by an interruption is dropped and that image redone.
    lines = (run_dir / "per_image.jsonl").read_text().splitlines()
    (run_dir / "per_image.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])
    assert run_eval(_parse(base)) == 0
    assert fake["seg"].calls == 4
    assert json.loads((run_dir / "results.json").read_text())["miou"] == pytest.approx(res["miou"])

    # Reports: markdown with the paper figure, a chart PNG, two worst overlays.
    md = (run_dir / "results.md").read_text()
    assert "| voc21 | cass |" in md and "65.8" in md and "aeroplane" in md
    with Image.open(run_dir / "per_class_iou.png") as chart:
        assert chart.size[1] > 21 * 10
    worst = sorted((run_dir / "worst").glob("*.png"))
    assert len(worst) == 2 and len(again["worst"]) == 2
    assert again["worst"][0]["miou"] <= again["worst"][1]["miou"]
    with Image.open(worst[0]) as im:
        assert im.size[0] >= 3 * 200  # three panels, small images scaled up

    # --no-resume starts over.
    assert run_eval(_parse(base + ["--no-resume"])) == 0
    assert fake["seg"].calls == 7


def test_ablation_reduced_zero_label_and_summary(tmp_path: Path, fake: dict) -> None:
    data = make_voc(tmp_path / "data", n=2, seed=3)
    out = tmp_path / "out"
    argv = ["eval", "--dataset", "voc21,voc20", "--root", str(tmp_path / "data"),
            "--out", str(out), "--no-progress", "--ablation", "no-ota, no-ops", "--worst", "0"]
    assert run_eval(_parse(argv)) == 0
    opts = [a.run_options for a in fake["args"]]
    assert opts == [{"presence_prior": False, "text_adjustment": False}] * 2
    assert [a.run_preset for a in fake["args"]] == ["voc21", "voc20"]
    results = {json.loads(p.read_text())["dataset"]: json.loads(p.read_text())
               for p in out.glob("*/results.json")}
    assert set(results) == {"voc21", "voc20"}
    assert results["voc21"]["paper"]["miou"] == 64.8  # Table 3, "+ eigenscaling" row
    assert results["voc20"]["paper"]["miou"] is None  # Table 3 has no VOC20 column
    pairs = [(img[..., 0] % 20, gt) for img, gt in data.values()]
    assert results["voc20"]["miou"] == pytest.approx(100 * _direct_miou(pairs, 20, reduce=True), abs=1e-3)
    summary = (out / "summary.md").read_text()
    assert "voc21" in summary and "voc20" in summary
    assert not any((out / d).is_dir() and list((out / d).glob("worst/*.png")) for d in out.iterdir())


def test_tiny_random_models_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_set: tuple
) -> None:
    """Real engine with tiny RANDOM-weight models: numbers are meaningless, only the
    mechanics (engine call, label range, caching, --limit, outputs) are checked.
    The preset runs one small 112 px pass to keep this fast on two CPU cores."""
    make_voc(tmp_path / "data", n=3)
    builds = []

    def build(args: argparse.Namespace) -> Segmenter:
        builds.append(args)
        small = get_preset(args.run_preset).with_(short_side=112, mode="whole")
        return Segmenter.from_models(*tiny_model_set, method=args.method, preset=small,
                                     device="cpu", **args.run_options)

    monkeypatch.setattr(_cli, "_build_segmenter", build)
    out = tmp_path / "out"
    argv = ["--dataset", "voc20", "--root", str(tmp_path / "data"), "--out", str(out),
            "--no-progress", "--limit", "2", "--worst", "1"]
    assert _cli.main(argv) == 0
    run_dir = next(out.iterdir())
    res = json.loads((run_dir / "results.json").read_text())
    assert res["num_images"] == 2 and res["preset"] == "voc20"
    assert 0.0 <= res["miou"] <= 100.0 and res["seconds_per_image"] > 0
    for rec in map(json.loads, (run_dir / "per_image.jsonl").read_text().splitlines()):
        assert len(rec["intersect"]) == 20
        assert sum(rec["label"]) > 0
    assert _cli.main(argv) == 0  # all cached: no second model build
    assert len(builds) == 1
    assert len(list((run_dir / "worst").glob("*.png"))) == 1


def test_bad_arguments(tmp_path: Path, fake: dict, capsys) -> None:
    make_voc(tmp_path / "data", n=1)
    root = str(tmp_path / "data")
    with pytest.raises(ValueError, match="Unknown dataset imagenet"):
        run_eval(_parse(["eval", "--dataset", "imagenet", "--root", root]))
    with pytest.raises(ValueError, match="no-ota"):
        run_eval(_parse(["eval", "--dataset", "voc21", "--root", root, "--ablation", "no-magic"]))
    with pytest.raises(ValueError, match="--method cass only"):
        run_eval(_parse(["eval", "--dataset", "voc21", "--root", root, "--method", "sclip",
                         "--ablation", "no-ota"]))
    with pytest.raises(ValueError, match="Unknown --method"):
        run_eval(_parse(["eval", "--dataset", "voc21", "--root", root, "--method", "nope"]))
    with pytest.raises(ValueError, match="Unknown preset"):
        run_eval(_parse(["eval", "--dataset", "voc21", "--root", root, "--preset", "nope"]))
    with pytest.raises(ValueError, match="--limit"):
        run_eval(_parse(["eval", "--dataset", "voc21", "--root", root, "--limit", "0"]))
    # A missing dataset fails before any model is built, naming the expected files.
    assert _cli.main(["--dataset", "ade20k", "--root", root, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "ADEChallengeData2016" in err and "images/validation" in err
    assert fake["builds"] == 0


def test_build_segmenter_asks_for_the_right_models(monkeypatch: pytest.MonkeyPatch) -> None:
    captured: dict = {}

    def fake_from_pretrained(**kwargs):
        captured.update(kwargs)
        return "segmenter"

    monkeypatch.setattr(Segmenter, "from_pretrained", staticmethod(fake_from_pretrained))
    args = _parse(["eval", "--dataset", "voc21", "--root", ".", "--clip", "ViT-L-14",
                   "--vfm", "dino_vits8", "--random-weights", "--method", "proxyclip"])
    args.run_preset, args.run_options = "voc21", {"matching": False}
    assert _cli._build_segmenter(args) == "segmenter"
    assert captured["clip"] == "ViT-L-14" and captured["vfm"] == "dino_vits8"
    assert captured["clip_weights"] == "random" and captured["vfm_weights"] == "random"
    assert captured["method"] == "proxyclip" and captured["preset"] == "voc21"
    assert captured["matching"] is False and captured["device"] == "auto"
    args.random_weights = False
    _cli._build_segmenter(args)
    assert captured["clip_weights"] == "openai" and captured["vfm_weights"] == "pretrained"


def test_parser_module_does_not_import_torch() -> None:
    """Building ``napari-cass --help`` must stay fast: no torch import for the parser."""
    import subprocess
    import sys

    code = (
        "import sys, argparse; from napari_cass.evaluation._cli import add_eval_parser; "
        "p = argparse.ArgumentParser(); add_eval_parser(p.add_subparsers()); "
        "print('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)}, check=True)
    assert out.stdout.strip() == "False"
