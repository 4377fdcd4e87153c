"""Find the labelled images in a dataset folder, in the layouts that users have.

Two layouts are read:

- one sub-folder per class: Kaggle names (``glioma``, ``notumor`` ...) or SARTAJ names
  (``glioma_tumor``, ``no_tumor`` ...);
- one sub-folder per tumour type and MR sequence, ``<Type> <Sequence>`` (e.g.
  ``Astrocitoma T1C+``, ``_NORMAL T2``), as in the "Brain Tumor MRI Images 44 Classes" set.
  Types are mapped onto the classes (``TYPE_TO_CLASS``); types outside the model's scope are
  listed as skipped with the reason, and the sequence is kept with each image.

Each folder is one *source*: images from one collection, which may differ from another
source in scanner, sequence mix and brightness. Training on several sources and measuring
per source is how the model is kept from learning the source instead of the tumour.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from mri_tumor.data.reading import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, not_a_file_reason

# The labels the folder layouts below are read into (the Kaggle folder names). A model's own
# classes and their order are in its card; a new model learns the labels its data has.
CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")
NORMAL_LABEL = "notumor"  # the label of images without a tumour
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
# Tumour types of the type-and-sequence layout (its own, Spanish/Portuguese, spelling and the
# English one) that belong to one of the classes. Every other type is out of scope.
TYPE_TO_CLASS = {
    "astrocitoma": "glioma",
    "astrocytoma": "glioma",
    "glioblastoma": "glioma",
    "oligodendroglioma": "glioma",
    "glioma": "glioma",
    "meningioma": "meningioma",
    "_normal": "notumor",
    "normal": "notumor",
    "pituitary": "pituitary",
}
# The tumour types of the ``<Type> <Sequence>`` layout, by their names in English (the labels
# of the ``types`` scheme), from the dataset's own spellings and the English ones.
TYPE_NAMES = {
    "astrocitoma": "astrocytoma", "astrocytoma": "astrocytoma",
    "carcinoma": "carcinoma (metastasis)", "metastasis": "carcinoma (metastasis)",
    "ependimoma": "ependymoma", "ependymoma": "ependymoma",
    "ganglioglioma": "ganglioglioma",
    "germinoma": "germinoma",
    "glioblastoma": "glioblastoma",
    "granuloma": "granuloma",
    "meduloblastoma": "medulloblastoma", "medulloblastoma": "medulloblastoma",
    "meningioma": "meningioma",
    "neurocitoma": "neurocytoma", "neurocytoma": "neurocytoma",
    "_normal": "normal", "normal": "normal",
    "oligodendroglioma": "oligodendroglioma",
    "papiloma": "papilloma (choroid plexus)", "papilloma": "papilloma (choroid plexus)",
    "schwannoma": "schwannoma",
    "tuberculoma": "tuberculoma",
}
TYPE_LABELS = tuple(sorted(set(TYPE_NAMES.values())))
DISPLAY_NAMES |= {label: label[0].upper() + label[1:] for label in TYPE_LABELS
                  if label not in DISPLAY_NAMES}
NORMAL_TYPE = "normal"
# The whole-scan patient layout (``data.patients``) holds glioma patients (LGG).
PATIENT_TUMOUR_CLASS = "glioma"
# How a folder layout is read into labels: "classes" (the four classes above) or "types"
# (the tumour types of the ``<Type> <Sequence>`` layout). A model's card names its scheme.
LABEL_SCHEMES = ("classes", "types")
# ``<Type> <Sequence>``: the sequences this layout uses, longest first (T1C+ before T1).
TYPE_SEQUENCE_FOLDER = re.compile(r"^(?P<type>.+?)\s+(?P<sequence>T1C\+|T1|T2|FLAIR)$",
                                  re.IGNORECASE)
# Folder names too generic to name a source: "brain-tumor-mri/Training" is used instead.
GENERIC_FOLDER_NAMES = {"training", "train", "testing", "test", "val", "validation", "data"}


def naming(class_names: list[str]) -> tuple[dict[str, str], str | None]:
    """What a new card records about these labels: how each is shown to people, and which
    one means no tumour (None when none does)."""
    display = {name: DISPLAY_NAMES[name] for name in class_names if name in DISPLAY_NAMES}
    normal = next((name for name in (NORMAL_LABEL, NORMAL_TYPE) if name in class_names), None)
    return display, normal


class UnknownClassFolderError(ValueError):
    """A dataset folder holds a sub-folder that is not one of the accepted class names."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str
    source: str = ""  # the dataset folder it came from (``source_name``)
    sequence: str = ""  # MR sequence when the layout tells it (T1, T1C+, T2), else ""
    # The patient or scan the image belongs to, when the layout tells it ("" otherwise):
    # images of one group are kept on one side of a split.
    group: str = ""


@dataclass
class FolderScan:
    """The images found under a dataset folder, and the files passed over (with why)."""

    root: Path
    source: str = ""
    images: list[LabelledImage] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def counts(self) -> dict[str, int]:
        """Images per label, in label order."""
        labels = sorted({image.label for image in self.images})
        return {name: sum(1 for i in self.images if i.label == name) for name in labels}


def source_name(root: str | Path) -> str:
    """The name a dataset folder is recorded under: its own name, or ``parent/name`` when
    its name is generic (``brain-tumor-mri/Training``)."""
    path = Path(root).resolve()
    if path.name.lower() in GENERIC_FOLDER_NAMES and path.parent.name:
        return f"{path.parent.name}/{path.name}"
    return path.name


def parse_type_sequence(folder: str) -> tuple[str, str] | None:
    """``"Astrocitoma T1C+"`` -> ``("Astrocitoma", "T1C+")``; None for other names."""
    match = TYPE_SEQUENCE_FOLDER.match(folder.strip())
    if match is None:
        return None
    return match["type"], match["sequence"].upper()


def class_of_folder(folder: str) -> tuple[str | None, str, str | None]:
    """Class, MR sequence and (for out-of-scope types) the reason, from a sub-folder name.

    Raises UnknownClassFolderError-worthy names as ``(None, "", None)``.
    """
    if folder.lower() in FOLDER_ALIASES:
        return FOLDER_ALIASES[folder.lower()], "", None
    parsed = parse_type_sequence(folder)
    if parsed is None:
        return None, "", None
    tumour_type, sequence = parsed
    label = TYPE_TO_CLASS.get(tumour_type.lower())
    if label is None:
        return None, sequence, (f"tumour type {tumour_type} is not one of this model's classes "
                                f"({', '.join(CLASS_NAMES)})")
    return label, sequence, None


def type_of_folder(folder: str) -> tuple[str | None, str, str | None]:
    """Tumour type (in English), MR sequence and, when it is not a type folder, the reason:
    the ``types`` scheme's reading of a sub-folder name."""
    parsed = parse_type_sequence(folder)
    if parsed is None:
        if folder.lower() in FOLDER_ALIASES:
            return None, "", (f"{folder}: the tumour-type scheme reads '<Type> <Sequence>' "
                              "folders, not class folders")
        return None, "", None
    tumour_type, sequence = parsed
    label = TYPE_NAMES.get(tumour_type.lower())
    if label is None:
        return None, sequence, None
    return label, sequence, None


EXCLUSIONS_FILE = Path(__file__).with_name("exclusions.csv")


def load_exclusions(path: Path | None = None) -> dict[tuple[str, str], str]:
    """The reviewed list of training images that are not used (not brain MRI, conflicting
    duplicates): ``(source, relative path) -> reason``. Training, calibration and evaluation
    all read their folders through ``scan_folder``, which leaves these out."""
    path = path or EXCLUSIONS_FILE
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {(row["source"], row["path"]): row["reason"] for row in csv.DictReader(handle)}


def scan_folder(root: str | Path, source: str | None = None,
                scheme: str = "classes") -> FolderScan:
    """List the images of a labelled folder (``root/<class>/**/<image>``,
    ``root/<Type> <Sequence>/**/<image>`` or the whole-scan patient layout of
    ``data.patients``), labelled by ``scheme``: "classes" maps the folders onto the four
    classes, "types" reads the tumour type of each type folder.

    An image in a sub-folder of a class folder (``notumor/<scan>/<image>``) belongs to that
    scan's group, as a patient's slices do. Files that are not images, whole folders outside
    the scheme and the images of the exclusion list (``load_exclusions``) are listed in
    ``skipped`` with the reason; an unknown folder name raises UnknownClassFolderError.
    """
    if scheme not in LABEL_SCHEMES:
        raise ValueError(f"unknown label scheme {scheme!r}; use {' or '.join(LABEL_SCHEMES)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    scan = FolderScan(root=root, source=source if source is not None else source_name(root))
    scan = _scan_layout(root, scan, scheme)
    excluded = load_exclusions()
    kept = []
    for image in scan.images:
        reason = excluded.get((scan.source, scan.relative(image.path)))
        if reason is None:
            kept.append(image)
        else:
            scan.skipped.append((scan.relative(image.path), f"excluded: {reason}"))
    scan.images = kept
    return scan


def _scan_layout(root: Path, scan: FolderScan, scheme: str) -> FolderScan:
    from mri_tumor.data.patients import is_patient_layout, patient_slices

    if is_patient_layout(root):
        rows, skipped = patient_slices(root, scheme,
                                       NORMAL_LABEL if scheme == "classes" else NORMAL_TYPE,
                                       PATIENT_TUMOUR_CLASS)
        scan.images = [LabelledImage(path, label, scan.source, sequence, patient)
                       for path, label, sequence, patient in rows]
        scan.skipped.extend(skipped)
        return scan
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    reader = type_of_folder if scheme == "types" else class_of_folder
    parsed = {p.name: reader(p.name) for p in class_dirs}
    unknown = [name for name, (label, _, reason) in parsed.items()
               if label is None and reason is None]
    if unknown:
        raise UnknownClassFolderError(
            f"{root}: unknown class folder(s) {', '.join(unknown)}; accepted names are "
            f"{', '.join(FOLDER_ALIASES)}, or '<Type> <Sequence>' such as 'Meningioma T1C+'")
    if not class_dirs:
        raise UnknownClassFolderError(
            f"{root}: no class folders found; expected sub-folders named "
            f"{', '.join(FOLDER_ALIASES)}, or '<Type> <Sequence>' such as 'Meningioma T1C+'")
    for loose in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")):
        if loose.name.lower() not in ("readme.md", "readme.txt", "readme"):
            scan.skipped.append((scan.relative(loose), "not inside a class folder"))
    for class_dir in class_dirs:
        label, sequence, reason = parsed[class_dir.name]
        if label is None:
            count = sum(1 for p in class_dir.rglob("*") if p.is_file())
            scan.skipped.append((f"{class_dir.name}/ ({count} files)", str(reason)))
            continue
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
                nested = path.relative_to(class_dir).parts
                group = f"{class_dir.name}/{nested[0]}" if len(nested) > 1 else ""
                scan.images.append(LabelledImage(path, label, scan.source, sequence, group))
    return scan


def scan_folders(roots: list[Path], scheme: str = "classes") -> list[FolderScan]:
    """Scan several dataset folders, one source each; two folders may not share a name."""
    scans = [scan_folder(root, scheme=scheme) for root in roots]
    names = [scan.source for scan in scans]
    if len(set(names)) != len(names):
        raise ValueError(f"two data folders have the same name ({', '.join(names)}); each "
                         "folder is a source and is recorded by its name")
    return scans
