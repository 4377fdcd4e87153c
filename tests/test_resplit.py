"""scripts/resplit_scan_sources.py: a fresh split of the whole-scan sources by patient."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mri_tumor.data.splitting import SplitRow, read_split_csv, write_split_csv

SCRIPT = Path(__file__).parents[1] / "scripts" / "resplit_scan_sources.py"
INSTITUTIONS = {"CS": 6, "DU": 12, "FG": 6}


def patient_names() -> list[str]:
    return [f"TCGA_{site}_{n:04d}_20000101" for site, count in INSTITUTIONS.items()
            for n in range(count)]


def write_split(path: Path, test: set[str]) -> None:
    """A split with three slices per patient (``test`` on the test side) and two healthy
    volumes, one per side."""
    rows = [SplitRow(f"{patient}/{patient}_{k}.tif", "glioma", "test" if patient in test
                     else "train", i, "0" * 64, "lgg-tcga", "FLAIR")
            for i, patient in enumerate(patient_names()) for k in range(3)]
    rows += [SplitRow(f"notumor/healthy_{k}/0.png", "notumor", side, 100 + k, "0" * 64,
                      "healthy-volumes") for k, side in enumerate(("train", "test"))]
    write_split_csv(rows, path)


def sides(path: Path) -> dict[str, set[str]]:
    """Each patient's sides in a split (a set, so that a patient on two sides shows)."""
    found: dict[str, set[str]] = {}
    for row in read_split_csv(path):
        if row.source == "lgg-tcga":
            found.setdefault(row.path.split("/")[0], set()).add(row.split)
    return found


def run(*args: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, check=True)


def test_the_new_test_side_holds_only_patients_never_tested_before(tmp_path: Path) -> None:
    names = patient_names()
    first_test = set(names[::6])  # 4 patients
    first = tmp_path / "split.csv"
    write_split(first, first_test)
    second = tmp_path / "split_oof.csv"
    run("--split", first, "--out", second, "--test", 4, "--rule-fold", 4, "--seed", 1)
    second_test = {p for p, s in sides(second).items() if s == {"test"}}
    assert len(second_test) == 4 and not second_test & first_test

    third = tmp_path / "split_six.csv"
    run("--split", second, "--out", third, "--test", 4, "--rule-fold", 4, "--seed", 6,
        "--tested-before", first, "--keep-healthy")
    third_sides = sides(third)
    assert all(len(s) == 1 for s in third_sides.values())  # one side per patient
    third_test = {p for p, s in third_sides.items() if s == {"test"}}
    third_val = {p for p, s in third_sides.items() if s == {"val"}}
    assert len(third_test) == 4 and len(third_val) == 4
    assert not third_test & (first_test | second_test)
    # Every institution keeps patients on the test side in proportion (6 / 12 / 6 of 4).
    assert sorted(p.split("_")[1] for p in third_test) == ["CS", "DU", "DU", "FG"]
    healthy = {r.path: r.split for r in read_split_csv(third) if r.source == "healthy-volumes"}
    assert healthy == {r.path: r.split for r in read_split_csv(second)
                       if r.source == "healthy-volumes"}


def test_without_tested_before_the_healthy_volumes_swap_sides(tmp_path: Path) -> None:
    first = tmp_path / "split.csv"
    write_split(first, set())
    out = tmp_path / "out.csv"
    run("--split", first, "--out", out, "--test", 4, "--rule-fold", 4)
    before = {r.path: r.split for r in read_split_csv(first) if r.source == "healthy-volumes"}
    after = {r.path: r.split for r in read_split_csv(out) if r.source == "healthy-volumes"}
    assert after == {path: "test" if side == "train" else "train"
                     for path, side in before.items()}
