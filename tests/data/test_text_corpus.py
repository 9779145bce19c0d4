from __future__ import annotations

from pathlib import Path

import pytest

from harness.data.text_corpus import EXCLUDED_DIRS, load_text, stdlib_files, stdlib_root


def test_stdlib_files_are_sorted_library_sources() -> None:
    files = stdlib_files()
    root = stdlib_root()
    assert len(files) > 100
    assert list(files) == sorted(files)
    for path in files:
        assert path.suffix == ".py"
        parts = path.relative_to(root).parts[:-1]
        assert not EXCLUDED_DIRS & set(parts), path
    assert root / "json" / "decoder.py" in files


def test_stdlib_split_is_about_ninety_ten_and_disjoint() -> None:
    everything = 1 << 30
    train = load_text("stdlib", "train", everything)
    test = load_text("stdlib", "test", everything)
    share = len(test) / (len(train) + len(test))
    assert 0.03 < share < 0.2
    # Whole files go to one side: a long line of the test text never shows up in train.
    line = max(test.splitlines()[:2000], key=len)
    assert len(line) > 60 and line not in train


def test_stdlib_text_is_deterministic_bounded_and_valid_utf8() -> None:
    first = load_text("stdlib", "test", 10_000)
    assert len(first) <= 10_000
    first.decode("utf-8")
    assert load_text("stdlib", "test", 50_000).startswith(first[:9_000])
    assert load_text("stdlib", "test", 10_000) == first


def test_file_source_splits_first_ninety_last_ten(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"abcdefghij" * 10)
    train = load_text(str(path), "train", 1000)
    test = load_text(str(path), "test", 1000)
    assert (len(train), len(test)) == (90, 10)
    assert train + test == path.read_bytes()
    assert load_text(str(path), "train", 5) == b"abcde"


def test_file_source_drops_a_character_cut_in_two(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("a" + "é" * 50, encoding="utf-8")  # 101 bytes: the cut at 90 splits an é
    assert load_text(str(path), "train", 1000).decode("utf-8") == "a" + "é" * 44
    assert load_text(str(path), "test", 1000).decode("utf-8") == "é" * 5
    assert load_text(str(path), "train", 8).decode("utf-8") == "a" + "é" * 3


def test_bad_arguments_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither 'stdlib' nor a file"):
        load_text(str(tmp_path / "missing.txt"), "test", 100)
    with pytest.raises(ValueError, match="unknown split"):
        load_text("stdlib", "validation", 100)
    with pytest.raises(ValueError, match="positive"):
        load_text("stdlib", "test", 0)
