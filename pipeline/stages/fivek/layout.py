"""Where MIT-Adobe FiveK's files are: originals, the experts' folders, the test split.

The dataset as distributed keeps its originals as
``raw_photos/HQa<first>to<last>/photos/a<NNNN>-<photographer>_<file>.dng``;
the experts' versions are the users' own Lightroom exports, one folder per
expert A-E, named by the same stem or by the ``a<NNNN>`` id alone.
"""

from __future__ import annotations

import re
from pathlib import Path

#: File name endings of an expert's retouched exports.
EXPERT_SUFFIXES = (".tif", ".tiff", ".jpg", ".jpeg", ".png")

#: The five FiveK experts.
EXPERTS = ("A", "B", "C", "D", "E")

#: A folder taken as expert X's when found directly inside the FiveK folder: ``expertC``, ``Expert_C``, ``expert-c``.
EXPERT_FOLDER = re.compile(r"expert[ _-]?([a-e])", re.IGNORECASE)

#: The FiveK image id at the start of a file stem: ``a0001`` ... ``a5000``.
FIVEK_ID = re.compile(r"a\d{4}(?![0-9])")

#: Images in the test set by default: the last 500 of 5,000 by name (a4501-a5000), the common 4,500/500 split.
TEST_COUNT = 500


class FiveKInputError(ValueError):
    """An unusable FiveK folder, ``--expert`` value or ``--test-list`` file; the message names it."""


def source_files(folder: Path) -> list[Path]:
    """The files directly in ``folder`` and in FiveK's ``raw_photos/*/photos/`` (or ``*/photos/``) below it.

    Sorted by path; hidden files left out. The caller filters by ending.
    """
    folder = Path(folder)
    found = [path for path in folder.iterdir() if path.is_file()]
    for photos in [*folder.glob("raw_photos/*/photos"), *folder.glob("*/photos")]:
        if photos.is_dir():
            found += [path for path in photos.iterdir() if path.is_file()]
    return sorted({path for path in found if not path.name.startswith(".")})


def fivek_id(stem: str) -> str:
    """The ``a<NNNN>`` id a FiveK file stem starts with, else the whole stem."""
    match = FIVEK_ID.match(stem)
    return match.group(0) if match else stem


def expert_folders(folder: Path | None, given: dict[str, Path]) -> dict[str, Path]:
    """Expert letter -> folder: those ``given`` (``--expert X=DIR``), else those found in ``folder``.

    Found folders are the direct subfolders of ``folder`` whose name matches
    :data:`EXPERT_FOLDER`; a given folder wins over a found one of the same letter.
    """
    found: dict[str, Path] = {}
    if folder is not None:
        for path in sorted(Path(folder).iterdir()):
            match = EXPERT_FOLDER.fullmatch(path.name)
            if match and path.is_dir():
                found.setdefault(match.group(1).upper(), path)
    found.update(given)
    return dict(sorted(found.items()))


def parse_expert(value: str) -> tuple[str, Path]:
    """``X=DIR`` (X one of A-E) as ``(X, DIR)``; raises FiveKInputError naming the value."""
    letter, sep, folder = value.partition("=")
    letter = letter.strip().upper()
    if not sep or letter not in EXPERTS or not folder:
        raise FiveKInputError(f"--expert {value!r}: expected X=DIR with X one of {', '.join(EXPERTS)}")
    path = Path(folder)
    if not path.is_dir():
        raise FiveKInputError(f"--expert {letter}: {path} is not a folder")
    return letter, path


def expert_files(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """An expert's exports by FiveK id (:func:`fivek_id` of the stem), and one-line problems (two files, one id)."""
    files: dict[str, Path] = {}
    problems: list[str] = []
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in EXPERT_SUFFIXES:
            continue
        key = fivek_id(path.stem)
        if key in files:
            problems.append(f"{path}: another file of {folder} is also image {key}; skipped")
            continue
        files[key] = path
    return files, problems


def held_out_names(names: list[str], test_list: Path | None = None, test_count: int = TEST_COUNT) -> set[str]:
    """The names of ``names`` in the test set: those in ``test_list``, else the last ``test_count`` by name.

    ``test_list`` holds one name per line, as a full stem (``a4501-kme_0204``)
    or a FiveK id (``a4501``); blank lines and ``#`` comments are ignored.
    """
    if test_list is None:
        ordered = sorted(names)
        return set(ordered[max(0, len(ordered) - test_count):]) if test_count else set()
    try:
        lines = Path(test_list).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FiveKInputError(f"{test_list}: cannot read ({exc})") from None
    wanted = {line.strip() for line in lines if line.strip() and not line.strip().startswith("#")}
    return {name for name in names if name in wanted or fivek_id(name) in wanted}
