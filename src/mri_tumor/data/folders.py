"""Find the labelled images in a dataset folder, in either layout that users have."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mri_tumor.data.reading import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, not_a_file_reason

# Output order of every model this project trains (the Kaggle folder names).
CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")
# The older SARTAJ layout names the same classes differently.
FOLDER_ALIASES = {
    "glioma": "glioma",
    "meningioma": "meningioma",
    "notumor": "notumor",
    "pituitary": "pituitary",
    "glioma_tumor": "glioma",
    "meningioma_tumor": "meningioma",
    "no_tumor": "notumor",
    "pituitary_tumor": "pituitary",
}
DISPLAY_NAMES = {
    "glioma": "Glioma",
    "meningioma": "Meningioma",
    "notumor": "No tumor",
    "pituitary": "Pituitary tumor",
}


class UnknownClassFolderError(ValueError):
    """A dataset folder holds a sub-folder that is not one of the accepted class names."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str


@dataclass
class FolderScan:
    """The images found under a dataset folder, and the files passed over (with why)."""

    root: Path
    images: list[LabelledImage] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def counts(self) -> dict[str, int]:
        return {name: sum(1 for i in self.images if i.label == name) for name in CLASS_NAMES}


def scan_folder(root: str | Path) -> FolderScan:
    """List the images of a labelled folder (``root/<class>/**/<image>``).

    Kaggle (``glioma``, ``notumor`` ...) and SARTAJ (``glioma_tumor``, ``no_tumor`` ...)
    folder names are both accepted. Files that are not images are listed in ``skipped``;
    an unknown class folder raises UnknownClassFolderError naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    scan = FolderScan(root=root)
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [p.name for p in class_dirs if p.name.lower() not in FOLDER_ALIASES]
    if unknown:
        raise UnknownClassFolderError(
            f"{root}: unknown class folder(s) {', '.join(unknown)}; accepted names are "
            f"{', '.join(FOLDER_ALIASES)}")
    if not class_dirs:
        raise UnknownClassFolderError(
            f"{root}: no class folders found; expected sub-folders named "
            f"{', '.join(FOLDER_ALIASES)}")
    for loose in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        scan.skipped.append((scan.relative(loose), "not inside a class folder"))
    for class_dir in class_dirs:
        label = FOLDER_ALIASES[class_dir.name.lower()]
        for path in sorted(class_dir.rglob("*")):
            if path.is_dir() or path.name.startswith("."):
                continue
            if not path.is_file():
                scan.skipped.append((scan.relative(path), not_a_file_reason(path)))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS + DICOM_EXTENSIONS:
                scan.skipped.append((scan.relative(path), "unsupported file type"))
            elif path.stat().st_size == 0:
                scan.skipped.append((scan.relative(path), "empty file"))
            else:
                scan.images.append(LabelledImage(path, label))
    return scan
