"""Split rows -> files -> labelled pixels: how a ``split.csv`` row finds its file under the data
folders and becomes the tensors that training, calibration and the benchmarks use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mri_tumor.data.folders import source_name
from mri_tumor.data.preprocess import to_model_pixels
from mri_tumor.data.reading import read_image
from mri_tumor.data.splitting import (
    SplitRow,
    read_split_csv,
)


def source_roots(data_dirs: list[Path] | Path) -> dict[str, Path]:
    """Source name -> folder; a single folder is also source "" (single-source splits)."""
    dirs = [data_dirs] if isinstance(data_dirs, Path) else list(data_dirs)
    roots = {source_name(d): Path(d) for d in dirs}
    if len(dirs) == 1:
        roots[""] = Path(dirs[0])
    return roots


def row_path(row: SplitRow, roots: dict[str, Path]) -> Path:
    """Where a split row's image is, given the source folders; KeyError names the source."""
    if row.source not in roots:
        raise KeyError(row.source)
    return roots[row.source] / row.path


def read_split_under(split: Path, data_dirs: list[Path] | Path) -> list[SplitRow]:
    """Read a split CSV and check that every file it lists is under its source folder."""
    if not split.is_file():
        raise FileNotFoundError(f"no split file at {split}")
    rows = read_split_csv(split)
    roots = source_roots(data_dirs)
    sources = sorted({r.source for r in rows} - roots.keys())
    if sources:
        given = ", ".join(dict.fromkeys(str(d) for d in roots.values()))
        raise FileNotFoundError(f"split {split} lists images of source(s) {', '.join(sources)}, "
                                f"but no data folder of that name was given ({given}); give "
                                "every folder the model was trained on")
    missing = [r.path for r in rows if not row_path(r, roots).is_file()]
    if missing:
        where = ", ".join(str(d) for d in dict.fromkeys(roots.values()))
        raise FileNotFoundError(f"{len(missing)} file(s) of split {split} are not under "
                                f"{where}, e.g. {missing[0]}")
    return rows


def load_refusal_pixels(folders: list[Path], image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Every image (and DICOM slice, whatever its modality) under the given folders, as
    uint8 (N, H, W) pixels, and their names; unreadable files are skipped."""
    from mri_tumor.data.reading import (
        DICOM_EXTENSIONS,
        IMAGE_EXTENSIONS,
        ImageReadError,
        read_frames,
    )

    pixels, names = [], []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS + DICOM_EXTENSIONS:
                continue
            try:
                frames = read_frames(path, any_modality=True)
            except (ImageReadError, OSError):
                continue
            for frame in frames:
                pixels.append(to_model_pixels(frame.image, image_size))
                names.append(str(path))
    if not pixels:
        raise ValueError(f"refusal examples {', '.join(map(str, folders))}: no readable "
                         "images there")
    return torch.from_numpy(np.stack(pixels)), names


def load_pixels(roots: dict[str, Path] | Path, rows: list[SplitRow], image_size: int,
                class_names: list[str] | None = None,
                sequence_names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and resize the listed images once: uint8 (N, H, W) and int64 labels (indices
    into ``class_names``, by default the rows' labels sorted); with ``sequence_names`` the
    labels are (N, 2): class and sequence."""
    if isinstance(roots, Path):
        roots = {"": roots}
    pixels = np.zeros((len(rows), image_size, image_size), dtype=np.uint8)
    for i, row in enumerate(rows):
        pixels[i] = to_model_pixels(read_image(row_path(row, roots)), image_size)
    class_names = class_names or class_names_of(rows)
    labels = torch.tensor([class_names.index(r.label) for r in rows])
    if sequence_names:
        sequences = torch.tensor([sequence_names.index(r.sequence) for r in rows])
        labels = torch.stack([labels, sequences], dim=1)
    return torch.from_numpy(pixels), labels


def class_names_of(rows: list[SplitRow]) -> list[str]:
    """The classes a new model learns from these rows: their labels, sorted."""
    return sorted({row.label for row in rows})


def sequence_names_of(rows: list[SplitRow]) -> list[str]:
    """The MR sequences a sequence head learns from these rows, sorted; ValueError when a
    row does not say its sequence."""
    unknown = [row.path for row in rows if not row.sequence]
    if unknown:
        raise ValueError(f"{len(unknown)} image(s) have no MR sequence in their folder name "
                         f"(e.g. {unknown[0]}); a sequence head needs '<Type> <Sequence>' "
                         "folders")
    return sorted({row.sequence for row in rows})
