"""File names built from user text keep their letters and never collide."""

from __future__ import annotations

import unicodedata

import pytest

from napari_cass.io import safe_filename, unique_filenames


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("café", "café"),
        ("猫", "猫"),
        ("東京 2024", "東京 2024"),
        ("a/b\\c", "a_b_c"),
        ('a:b*c?d"e<f>g|h', "a_b_c_d_e_f_g_h"),
        ("tab\there", "tab_here"),
        ("..", "unnamed"),
        ("../../etc/passwd", "_.._etc_passwd"),
        (".hidden", "hidden"),
        ("trailing. ", "trailing"),
        ("CON", "_CON"),
        ("com1.txt", "_com1.txt"),
        ("", "unnamed"),
        ("///", "unnamed"),
    ],
)
def test_safe_filename(text: str, expected: str) -> None:
    assert safe_filename(text) == expected


def test_safe_filename_is_nfc_and_bounded() -> None:
    decomposed = unicodedata.normalize("NFD", "café")
    assert decomposed != "café"
    assert safe_filename(decomposed) == "café"
    long = safe_filename("猫" * 500)
    assert len(long.encode("utf-8")) <= 200
    assert set(long) == {"猫"}


def test_unique_filenames_case_insensitive_and_stable() -> None:
    names = ["猫", "鳥", "Café", "café", "a:b", "a_b", "cafe"]
    out = unique_filenames(names)
    assert out == ["猫", "鳥", "Café", "café_2", "a_b", "a_b_2", "cafe"]
    assert len({n.casefold() for n in out}) == len(out)
    assert unique_filenames(names) == out  # a re-run maps every input to the same name


def test_unique_filenames_avoids_taken_names() -> None:
    assert unique_filenames(["x", "X"], taken=["x_overlay", "X"]) == ["x_2", "X_3"]
