"""The first run without weights explains itself, fast (issue 9).

Without weights and without network, a run used to print dozens of
huggingface_hub retry warnings over ~50 s and then name only CLIP. Now every
model is looked up locally first, the Hub is asked once with a short timeout,
and one message names every missing model with its file, folder, download
address and import command. The "network" here is a local endpoint (closed
port, or a listener that never answers), so the tests behave the same on a
machine with internet access.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from _weights_fixtures import closed_hub, env, local_hub, silent_hub  # noqa: F401
from PIL import Image

from napari_cass import cli
from napari_cass.engine import Segmenter
from napari_cass.engine import _weights as W

# Generous: the work is a few cache lookups and one refused connection (well under a
# second), or one probe that times out after HUB_PROBE_TIMEOUT_S = 3 s.
TIME_BOUND_S = 20.0


@pytest.fixture()
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record any download attempt (there must be none when the Hub cannot be reached)."""
    import huggingface_hub

    calls: list[str] = []

    def record(repo_id: str, filename: str, **kwargs) -> str:
        calls.append(f"{repo_id}/{filename}")
        raise AssertionError("no download may be attempted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", record)
    return calls


def _assert_names_every_default_model(msg: str, cache: Path) -> None:
    for name, file_name, repo, folder in (
        ("ViT-B-16", "ViT-B-16_openai.safetensors", "timm/vit_base_patch16_clip_224.openai", "clip"),
        ("dino_vitb8", "vit_base_patch8_224.dino.safetensors", "timm/vit_base_patch8_224.dino", "vfm"),
    ):
        assert f"{name} (" in msg and file_name in msg and repo in msg
        assert str(cache / folder) in msg
        assert f"napari-cass weights import PATH --model {name}" in msg
    assert "CLIP" in msg and "DINO" in msg
    assert "dl.fbaipublicfiles.com/dino" in msg and "openaipublic.azureedge.net/clip" in msg
    assert "Hugging Face cache (" in msg
    assert "weights download --model ViT-B-16 --model dino_vitb8' fetches" in msg
    assert "overwrite=True" not in msg and "Retrying" not in msg


def test_first_cli_run_without_network_fails_fast_naming_clip_and_dino(
        env: Path, closed_hub: str, no_download: list[str], tmp_path: Path, capfd) -> None:
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    start = time.perf_counter()
    code = cli.main(["segment", str(image), "--classes", "cat, dog", "--out", str(tmp_path / "out")])
    elapsed = time.perf_counter() - start
    out, err = capfd.readouterr()
    assert code == 2 and elapsed < TIME_BOUND_S
    _assert_names_every_default_model(err, env)
    assert f"{closed_hub} is unreachable" in err
    assert no_download == []
    assert "WARNING" not in err and len(err.splitlines()) <= 16  # one message, no retry spam


def test_offline_mode_names_every_missing_model_without_any_network(env: Path, no_download: list[str]) -> None:
    start = time.perf_counter()
    with pytest.raises(W.WeightsNotFoundError) as info:
        Segmenter.from_pretrained(device="cpu")  # HF_HUB_OFFLINE=1 (the env fixture)
    assert time.perf_counter() - start < TIME_BOUND_S
    assert info.value.models == ("ViT-B-16", "dino_vitb8")
    _assert_names_every_default_model(str(info.value), env)
    assert "offline mode: HF_HUB_OFFLINE=1, so nothing was downloaded" in str(info.value)
    assert no_download == []


def test_a_hub_that_never_answers_costs_one_short_timeout(env: Path, silent_hub: str, no_download: list[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAPARI_CASS_HUB_TIMEOUT", "1")
    start = time.perf_counter()
    with pytest.raises(W.WeightsNotFoundError) as info:
        Segmenter.from_pretrained(clip="tiny_clip", vfm="tiny_vfm", device="cpu")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0 + 1.0 + 2.0  # the probe's timeout, its +1 s guard, and slack for a busy machine
    assert info.value.models == ("tiny_clip", "tiny_vfm")
    assert f"{silent_hub} did not answer within 1 s" in str(info.value)
    assert no_download == []


def test_present_models_are_not_reported_and_need_no_network(env: Path, closed_hub: str, no_download: list[str],
                                                            tmp_path: Path) -> None:
    from _weights_fixtures import tiny_vit
    from safetensors.torch import save_file

    checkpoint = tmp_path / "dino.safetensors"
    save_file(tiny_vit().state_dict(), str(checkpoint))
    W.import_weights(checkpoint, "tiny_vfm")
    with pytest.raises(W.WeightsNotFoundError) as info:
        Segmenter.from_pretrained(clip="tiny_clip", vfm="tiny_vfm", device="cpu")
    assert info.value.models == ("tiny_clip",)
    assert "tiny_vfm" not in str(info.value)
    with pytest.warns(UserWarning, match="random weights"):  # only the local file: no network needed
        seg = Segmenter.from_pretrained(clip="tiny_clip", clip_weights="random", vfm="tiny_vfm", device="cpu")
    assert seg.vfm_model is not None and no_download == []


def test_a_bad_explicit_path_is_reported_before_any_download(env: Path, local_hub: str,
                                                            no_download: list[str], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tiny_vfm: Weights file .*nope\.pth does not exist"):
        Segmenter.from_pretrained(clip="tiny_clip", vfm="tiny_vfm", vfm_weights=str(tmp_path / "nope.pth"),
                                  device="cpu")
    assert no_download == []


def test_probe_timeout_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAPARI_CASS_HUB_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="NAPARI_CASS_HUB_TIMEOUT must be a number of seconds, got 'soon'"):
        W.probe_hub()


def test_first_run_as_a_user_runs_it(tmp_path: Path, closed_hub: str) -> None:
    """The command in a fresh process: exit code 2, one message on stderr, no retry warnings."""
    import os
    import subprocess
    import sys

    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 56, 3), 128, dtype=np.uint8)).save(image)
    env_vars = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env_vars.update(NAPARI_CASS_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"),
                    HF_ENDPOINT=closed_hub, OMP_NUM_THREADS="1")
    program = ("import sys, time; from napari_cass.cli import main; start = time.perf_counter(); "
               "code = main(sys.argv[1:]); print(f'ELAPSED {time.perf_counter() - start:.3f}', file=sys.stderr); "
               "sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", program, "segment", str(image), "--classes", "cat, dog",
                           "--out", str(tmp_path / "out")], env=env_vars, capture_output=True, text=True,
                          timeout=300)
    *message, elapsed = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert float(elapsed.split()[1]) < TIME_BOUND_S  # the run, imports of torch & co included
    _assert_names_every_default_model("\n".join(message), tmp_path / "cache")
    assert message[0].startswith("napari-cass: error: Model weights are missing for ViT-B-16 (CLIP), dino_vitb8")
    assert len(message) <= 14 and not any("WARNING" in line or "Retry" in line for line in message)
    assert not (tmp_path / "out").exists()
