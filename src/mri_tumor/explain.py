"""Explanations for a prediction: a Grad-CAM heat map and a short text about the class.

Grad-CAM (Selvaraju et al., 2017) shows which parts of the image drove the score of one class:
the gradient of that class' logit with respect to the last convolutional feature maps gives
one weight per channel (its mean over positions); the weighted sum of the maps, rectified,
is the heat map. It is computed with the torch model; a predictor on the ONNX backend has no
torch model, so the first Grad-CAM call loads one from the same model folder (once per folder)
and keeps it.

The texts are plain-language summaries written for this project, each with public sources,
so that every front end (web app, HTTP API) shows the same explanation. Research tool, not a
diagnosis.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mri_tumor.data.preprocess import normalize, to_model_pixels
from mri_tumor.data.reading import to_grayscale

if TYPE_CHECKING:
    from mri_tumor.inference import Predictor


@dataclass(frozen=True)
class Source:
    """A public page that the explanation text is based on."""

    title: str
    url: str


@dataclass(frozen=True)
class ClassExplanation:
    """What a class means, in a few sentences, and where to read more."""

    title: str
    summary: str
    on_mri: str
    sources: tuple[Source, ...]


_NCI_BRAIN = Source("National Cancer Institute: Brain Tumors—Patient Version",
                    "https://www.cancer.gov/types/brain")
_MEDLINEPLUS_HEAD_MRI = Source("MedlinePlus (U.S. National Library of Medicine): Head MRI",
                               "https://medlineplus.gov/ency/article/003791.htm")
_WHO_CNS5 = Source("Louis DN et al. The 2021 WHO Classification of Tumors of the Central "
                   "Nervous System: a summary. Neuro-Oncology, 2021",
                   "https://doi.org/10.1093/neuonc/noab106")
_RADIOPAEDIA_TB_GRANULOMA = Source("Radiopaedia: Intracranial tuberculous granuloma",
                                   "https://radiopaedia.org/articles/"
                                   "intracranial-tuberculous-granuloma")

EXPLANATIONS: dict[str, ClassExplanation] = {
    "glioma": ClassExplanation(
        title="Glioma",
        summary=(
            "A glioma is a tumour that starts in the glial cells, the cells that hold nerve "
            "cells in place and support them in the brain and spinal cord. It is one of the "
            "most common tumours to begin in the brain itself. Gliomas range from slow-growing "
            "(low grade) to fast-growing (high grade, such as glioblastoma); their type, grade "
            "and genetic features guide treatment, which may combine surgery, radiotherapy "
            "and chemotherapy."),
        on_mri=(
            "Usually a mass inside the brain tissue, often in a cerebral hemisphere, with "
            "edges that can be hard to define and swelling around it."),
        sources=(
            Source("Mayo Clinic: Glioma — Symptoms and causes",
                   "https://www.mayoclinic.org/diseases-conditions/glioma/symptoms-causes/"
                   "syc-20350251"),
            _NCI_BRAIN,
        ),
    ),
    "meningioma": ClassExplanation(
        title="Meningioma",
        summary=(
            "A meningioma grows from the meninges, the layers of membrane that wrap the brain "
            "and spinal cord. It is the most common tumour found inside the skull. Most are "
            "not cancerous and grow slowly, often for years without symptoms, and many are "
            "found by chance on a scan done for another reason. Small ones may only be "
            "watched; larger ones or those causing symptoms may be removed or treated with "
            "radiation."),
        on_mri=(
            "Usually a well-defined mass lying against the inner surface of the skull or a "
            "fold of the dura, pressing on the brain from outside rather than growing in it."),
        sources=(
            Source("Mayo Clinic: Meningioma — Symptoms and causes",
                   "https://www.mayoclinic.org/diseases-conditions/meningioma/symptoms-causes/"
                   "syc-20355643"),
            _NCI_BRAIN,
        ),
    ),
    "pituitary": ClassExplanation(
        title="Pituitary tumor",
        summary=(
            "A pituitary tumour is a growth in the pituitary gland, the pea-sized gland at "
            "the base of the brain, behind the nose, that controls many of the body's "
            "hormones. Almost all are benign adenomas that do not spread. They cause symptoms "
            "by making too much (or too little) of a hormone, or by pressing on nearby "
            "structures such as the optic nerves, which can affect vision. Options include "
            "watching, medication, surgery (often through the nose) and radiotherapy."),
        on_mri=(
            "A mass in the midline at the skull base, in the small bony hollow (sella "
            "turcica) below the brain, sometimes growing upwards towards the optic nerves."),
        sources=(
            Source("Mayo Clinic: Pituitary tumors — Symptoms and causes",
                   "https://www.mayoclinic.org/diseases-conditions/pituitary-tumors/"
                   "symptoms-causes/syc-20350548"),
            Source("National Cancer Institute: Pituitary Tumors—Patient Version",
                   "https://www.cancer.gov/types/pituitary"),
        ),
    ),
    "notumor": ClassExplanation(
        title="No tumor",
        summary=(
            "The model found none of the features it learned for glioma, meningioma or "
            "pituitary tumour in this slice. That does not rule out disease: one slice shows "
            "only part of the brain, and the model knows only these three tumour types, so "
            "other tumours and other conditions (stroke, bleeding, infection, multiple "
            "sclerosis...) are outside what it can see. Only a radiologist reading the whole "
            "study can call a scan normal."),
        on_mri=(
            "Brain tissue, fluid spaces and the midline look like those of the scans without "
            "a tumour that the model was trained on."),
        sources=(_MEDLINEPLUS_HEAD_MRI, _NCI_BRAIN),
    ),
    # -- The tumour-type model (15 classes; "meningioma" above serves both models) ----------
    "astrocytoma": ClassExplanation(
        title="Astrocytoma",
        summary=(
            "An astrocytoma is a glioma whose cells resemble astrocytes, the star-shaped "
            "support cells of the brain. In adults the main type is the diffusely infiltrating "
            "astrocytoma, IDH-mutant (CNS WHO grade 2, 3 or 4), usually in young and "
            "middle-aged adults in a cerebral hemisphere; other forms, such as pilocytic "
            "astrocytoma (grade 1), are commoner in children. Grade and molecular markers "
            "guide treatment with surgery, radiotherapy and chemotherapy."),
        on_mri=(
            "Typically an ill-defined mass in the white matter or cortex, dark on T1 and "
            "bright on T2; lower-grade tumours usually show little or no enhancement with "
            "contrast, while enhancement or necrosis suggests a higher grade."),
        sources=(
            Source("Radiopaedia: Astrocytoma, IDH-mutant",
                   "https://radiopaedia.org/articles/astrocytoma-idh-mutant-1"),
            _WHO_CNS5,
        ),
    ),
    "carcinoma (metastasis)": ClassExplanation(
        title="Brain metastasis (carcinoma)",
        summary=(
            "A brain metastasis is a tumour that has spread to the brain from a cancer "
            "elsewhere in the body, most often from the lung, breast, skin (melanoma), kidney "
            "or bowel; most are carcinomas, cancers of epithelial cells. Metastases are the "
            "most common tumours in the adult brain and are often multiple. Treatment depends "
            "on the primary cancer and may combine surgery, radiosurgery or whole-brain "
            "radiotherapy and drug treatment."),
        on_mri=(
            "One or more round, well-defined lesions, often at the junction of grey and white "
            "matter, enhancing solidly or as a ring on T1 with contrast, with more surrounding "
            "swelling (bright on T2) than their size would suggest."),
        sources=(
            Source("Radiopaedia: Brain metastases",
                   "https://radiopaedia.org/articles/brain-metastases"),
            Source("National Cancer Institute: Metastatic Cancer",
                   "https://www.cancer.gov/types/metastatic-cancer"),
        ),
    ),
    "ependymoma": ClassExplanation(
        title="Ependymoma",
        summary=(
            "An ependymoma is a glioma arising from the ependymal cells that line the "
            "brain's ventricles and the central canal of the spinal cord. In children most "
            "grow in the posterior fossa, around the fourth ventricle; in adults they are "
            "more often found in the spinal cord. The 2021 WHO classification groups them by "
            "site and molecular features; most are CNS WHO grade 2 or 3. Treatment is mainly "
            "surgery, often followed by radiotherapy."),
        on_mri=(
            "Usually a heterogeneous mass in or next to a ventricle, often filling the fourth "
            "ventricle and squeezing out through its openings; mixed signal on T1 and T2 from "
            "cysts, calcification or bleeding, with variable, patchy enhancement."),
        sources=(
            Source("Radiopaedia: Ependymoma", "https://radiopaedia.org/articles/ependymoma"),
            Source("National Cancer Institute (NCI-CONNECT): Ependymoma",
                   "https://www.cancer.gov/rare-brain-spine-tumor/tumors/ependymoma"),
            _WHO_CNS5,
        ),
    ),
    "ganglioglioma": ClassExplanation(
        title="Ganglioglioma",
        summary=(
            "A ganglioglioma is a slow-growing glioneuronal tumour made of both abnormal "
            "nerve cells (ganglion cells) and glial cells; it is CNS WHO grade 1. It mostly "
            "affects children and young adults, typically in the temporal lobe, and is one "
            "of the commonest tumour causes of long-standing epilepsy. Complete surgical "
            "removal usually controls both the tumour and the seizures."),
        on_mri=(
            "Typically a well-defined lesion in the cortex, often a cyst with a solid nodule; "
            "the solid part is bright on T2, may contain calcification and enhances variably "
            "with contrast, with little surrounding swelling."),
        sources=(
            Source("Radiopaedia: Ganglioglioma",
                   "https://radiopaedia.org/articles/ganglioglioma"),
            _WHO_CNS5,
        ),
    ),
    "germinoma": ClassExplanation(
        title="Germinoma",
        summary=(
            "A germinoma is a germ-cell tumour: it grows from cells like those that normally "
            "form eggs and sperm, and matches seminoma of the testis under the microscope. It "
            "occurs mostly in children, teenagers and young adults, in the midline near the "
            "pineal gland or above the pituitary (suprasellar region); pineal ones are far "
            "more common in males. It can spread through the cerebrospinal fluid but is very "
            "sensitive to radiotherapy and chemotherapy, and is usually curable."),
        on_mri=(
            "A midline mass in the pineal or suprasellar region, of similar signal to grey "
            "matter on T1 and T2, enhancing strongly with contrast; it may block fluid flow "
            "(hydrocephalus) or spread along the ventricle walls."),
        sources=(
            Source("National Cancer Institute: Childhood Central Nervous System Germ Cell "
                   "Tumors Treatment (PDQ®)–Patient Version",
                   "https://www.cancer.gov/types/brain/patient/child-cns-germ-cell-treatment-pdq"),
            Source("Radiopaedia: Pineal germinoma",
                   "https://radiopaedia.org/articles/pineal-germinoma"),
            _WHO_CNS5,
        ),
    ),
    "glioblastoma": ClassExplanation(
        title="Glioblastoma",
        summary=(
            "Glioblastoma is the most common malignant primary brain tumour in adults and the "
            "most aggressive glioma. In the 2021 WHO classification it is a diffuse astrocytic "
            "glioma without an IDH mutation (glioblastoma, IDH-wildtype), CNS WHO grade 4, "
            "found mostly in older adults in the cerebral hemispheres, spreading along "
            "white-matter tracts. "
            "Standard treatment is maximal safe surgery, then radiotherapy with temozolomide "
            "chemotherapy; even so, it usually comes back."),
        on_mri=(
            "An irregular mass with a thick, uneven rim of enhancement around a dark necrotic "
            "centre on T1 with contrast, surrounded by bright T2 signal from swelling and "
            "infiltrating tumour; it may cross the corpus callosum."),
        sources=(
            Source("Radiopaedia: Glioblastoma, IDH-wildtype",
                   "https://radiopaedia.org/articles/glioblastoma-idh-wildtype"),
            _WHO_CNS5,
        ),
    ),
    "granuloma": ClassExplanation(
        title="Granuloma",
        summary=(
            "A granuloma is not a tumour: it is a small, compact nodule of inflammatory "
            "immune cells that the body builds to wall off an infection or irritant. In the "
            "brain, granulomas can result from tuberculosis (a tuberculoma), parasites such as "
            "the pork tapeworm (neurocysticercosis), fungi, or non-infectious disease such as "
            "sarcoidosis. Finding the cause matters: most are treated with medicines rather "
            "than surgery, though a biopsy is sometimes needed."),
        on_mri=(
            "Usually one or a few small round lesions with ring-shaped or nodular enhancement "
            "on T1 with contrast and surrounding swelling on T2; it can look like a tumour or "
            "a metastasis."),
        sources=(
            Source("Radiopaedia: Neurocysticercosis",
                   "https://radiopaedia.org/articles/neurocysticercosis"),
            _RADIOPAEDIA_TB_GRANULOMA,
        ),
    ),
    "medulloblastoma": ClassExplanation(
        title="Medulloblastoma",
        summary=(
            "Medulloblastoma is a malignant embryonal tumour of the cerebellum, CNS WHO grade "
            "4, and the most common malignant brain tumour of childhood; it also occurs in "
            "young adults. It often spreads through the cerebrospinal fluid, so the whole "
            "brain and spine are imaged. Molecular groups (WNT-activated, SHH-activated, "
            "non-WNT/non-SHH) guide treatment with surgery, craniospinal radiotherapy and "
            "chemotherapy."),
        on_mri=(
            "A solid mass in the posterior fossa, in children usually in the midline "
            "(vermis) pushing into the fourth ventricle; dark on T1, variable on T2, densely "
            "cellular (restricted diffusion) and enhancing, often with hydrocephalus."),
        sources=(
            Source("Radiopaedia: Medulloblastoma",
                   "https://radiopaedia.org/articles/medulloblastoma"),
            Source("National Cancer Institute (NCI-CONNECT): Medulloblastoma",
                   "https://www.cancer.gov/rare-brain-spine-tumor/tumors/medulloblastoma"),
            _WHO_CNS5,
        ),
    ),
    "neurocytoma": ClassExplanation(
        title="Central neurocytoma",
        summary=(
            "A central neurocytoma is a rare tumour of small, uniform cells with neuronal "
            "features, CNS WHO grade 2. It typically affects young adults and grows inside "
            "the lateral ventricles, often attached to the septum pellucidum near the foramen "
            "of Monro. Symptoms usually come from blocked cerebrospinal fluid flow "
            "(hydrocephalus). Surgical removal is the main treatment and the outlook is "
            "generally good."),
        on_mri=(
            "A well-defined mass inside a lateral ventricle with a 'bubbly' look from many "
            "small cysts; about grey-matter signal on T1, heterogeneous and bright on T2, "
            "often calcified, with moderate, patchy enhancement."),
        sources=(
            Source("Radiopaedia: Central neurocytoma",
                   "https://radiopaedia.org/articles/central-neurocytoma"),
            _WHO_CNS5,
        ),
    ),
    "normal": ClassExplanation(
        title="No tumor",
        summary=(
            "The model found none of the features it learned for the tumour and lesion types "
            "it knows in this slice. That does not rule out disease: one slice shows only "
            "part of the brain, and the model knows only a limited set of types, so other "
            "tumours and other conditions (stroke, bleeding, infection, multiple "
            "sclerosis...) are outside what it can see. Only a radiologist reading the whole "
            "study can call a scan normal."),
        on_mri=(
            "Brain tissue, fluid spaces and the midline look like those of the scans without "
            "a tumour or lesion that the model was trained on."),
        sources=(_MEDLINEPLUS_HEAD_MRI, _NCI_BRAIN),
    ),
    "oligodendroglioma": ClassExplanation(
        title="Oligodendroglioma",
        summary=(
            "An oligodendroglioma is a diffusely infiltrating glioma defined by an IDH "
            "mutation together with loss of chromosome arms 1p and 19q (oligodendroglioma, "
            "IDH-mutant and 1p/19q-codeleted), CNS WHO grade 2 or 3. It occurs mostly in "
            "adults, most often in the frontal lobe, and commonly presents with seizures. It "
            "grows slowly and responds better to radiotherapy and chemotherapy than other "
            "diffuse gliomas."),
        on_mri=(
            "A mass involving the cortex and the white matter beneath it, dark on T1 and "
            "bright on T2, often with calcification; enhancement is absent or patchy and "
            "commoner in grade 3 tumours."),
        sources=(
            Source("Radiopaedia: Oligodendroglioma",
                   "https://radiopaedia.org/articles/oligodendroglioma"),
            Source("National Cancer Institute (NCI-CONNECT): Oligodendroglioma",
                   "https://www.cancer.gov/rare-brain-spine-tumor/tumors/oligodendroglioma"),
            _WHO_CNS5,
        ),
    ),
    "papilloma (choroid plexus)": ClassExplanation(
        title="Choroid plexus papilloma",
        summary=(
            "A choroid plexus papilloma is a benign tumour of the choroid plexus, the tissue "
            "in the ventricles that makes cerebrospinal fluid; it is CNS WHO grade 1. It is "
            "most common in young children, usually in a lateral ventricle, while in adults "
            "the fourth ventricle is the usual site. It often causes hydrocephalus, by "
            "blocking fluid flow or making too much fluid. Complete surgical removal is "
            "usually curative."),
        on_mri=(
            "A well-defined, lobulated, cauliflower-like mass inside a ventricle, about "
            "grey-matter signal on T1 and similar or brighter on T2, enhancing strongly with "
            "contrast, usually with enlarged ventricles."),
        sources=(
            Source("Radiopaedia: Choroid plexus papilloma",
                   "https://radiopaedia.org/articles/choroid-plexus-papilloma"),
            Source("National Cancer Institute (NCI-CONNECT): Choroid Plexus Tumors",
                   "https://www.cancer.gov/rare-brain-spine-tumor/tumors/choroid-plexus-tumors"),
            _WHO_CNS5,
        ),
    ),
    "schwannoma": ClassExplanation(
        title="Schwannoma",
        summary=(
            "A schwannoma is a benign tumour of Schwann cells, which form the insulating "
            "sheath of nerves; it is CNS WHO grade 1. Inside the skull it most often grows "
            "on the hearing and balance nerve (vestibular schwannoma, or acoustic neuroma), "
            "usually in adults, causing one-sided hearing loss, tinnitus or unsteadiness. "
            "Schwannomas on both sides suggest neurofibromatosis type 2 (NF2). Options are "
            "monitoring, radiosurgery or surgery."),
        on_mri=(
            "A mass at the cerebellopontine angle extending into the internal auditory canal "
            "('ice-cream cone' shape), about grey-matter signal on T1, bright on T2 and "
            "enhancing strongly with contrast; larger ones may contain cysts."),
        sources=(
            Source("Radiopaedia: Vestibular schwannoma",
                   "https://radiopaedia.org/articles/vestibular-schwannoma"),
            _WHO_CNS5,
        ),
    ),
    "tuberculoma": ClassExplanation(
        title="Tuberculoma",
        summary=(
            "A tuberculoma is not a tumour: it is an infectious, inflammatory lesion, a "
            "granuloma formed around tuberculosis bacteria (Mycobacterium tuberculosis) that "
            "have reached the brain through the blood. It is commonest where tuberculosis is "
            "frequent and can occur with or without tuberculous meningitis. It is treated "
            "with months of anti-tuberculosis medicines, often with steroids, and rarely "
            "needs surgery, so telling it apart from a tumour matters."),
        on_mri=(
            "One or more round lesions with ring or nodular enhancement on T1 with contrast "
            "and surrounding swelling; a solid caseating centre is often dark on T2, which "
            "helps to tell it from many tumours and abscesses."),
        sources=(
            _RADIOPAEDIA_TB_GRANULOMA,
            Source("World Health Organization: Tuberculosis — fact sheet",
                   "https://www.who.int/news-room/fact-sheets/detail/tuberculosis"),
        ),
    ),
}


def explanation(class_name: str) -> ClassExplanation:
    """The explanation of one class (a model class name such as ``"glioma"``)."""
    try:
        return EXPLANATIONS[class_name]
    except KeyError:
        raise KeyError(f"no explanation for class {class_name!r}; known: "
                       f"{', '.join(EXPLANATIONS)}") from None


# -- Grad-CAM ------------------------------------------------------------------------------
_torch_models_lock = threading.Lock()


@cache
def _torch_model_for(model_dir: Path) -> torch.nn.Module:
    from mri_tumor.models import fuse_batch_norm, load_model

    model, _, _ = load_model(model_dir)
    return fuse_batch_norm(model)  # as the torch predictor runs it


def torch_model(predictor: Predictor) -> torch.nn.Module:
    """The predictor's torch model; for the ONNX backend, one loaded once from its folder."""
    if predictor.model is not None:
        return predictor.model
    if predictor.model_dir is None:
        raise ValueError("Grad-CAM needs the torch model, and this predictor has neither a "
                         "torch model nor a model folder to load one from")
    with _torch_models_lock:
        return _torch_model_for(Path(predictor.model_dir).resolve())


def gradcam(predictor: Predictor, image: Image.Image, class_index: int,
            size: tuple[int, int] | None = None) -> np.ndarray:
    """Grad-CAM heat map of ``class_index`` for a grayscale image.

    Returns a float32 array in [0, 1] of shape (height, width) of the original image, or of
    ``size`` = (width, height) when given (for a display copy). All zeros when no region
    speaks for the class.
    """
    if not 0 <= class_index < len(predictor.class_names):
        raise ValueError(f"class_index {class_index} is out of range for "
                         f"{len(predictor.class_names)} classes")
    model = torch_model(predictor)
    grey = to_grayscale(image)
    width, height = size or grey.size
    pixels = to_model_pixels(grey, predictor.spec.image_size)
    batch = normalize(torch.from_numpy(pixels[None].copy()), predictor.spec)
    # The backbone runs without a graph: only the head (pooling + linear layer) lies between
    # the feature maps and the logit, so that is all the backward pass has to go through.
    with torch.no_grad():
        maps = model.feature_maps(batch)
    with torch.enable_grad():
        maps = maps.detach().requires_grad_(True)
        logits = model.classify(model.pool_features(maps))
        logits[0, class_index].backward()
    assert maps.grad is not None
    weights = maps.grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * maps.detach()).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    cam = cam.numpy().astype(np.float32)
    low, high = float(cam.min()), float(cam.max())
    if high - low <= 1e-12:
        return np.zeros((height, width), dtype=np.float32)
    return np.clip((cam - low) / (high - low), 0.0, 1.0)


@cache
def _colour_table(colormap: str) -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[colormap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.float32)


def overlay(image: Image.Image, cam: np.ndarray, opacity: float = 0.5,
            colormap: str = "turbo") -> Image.Image:
    """The image in grey with the heat map blended over it (an RGB image of the same size).

    Each pixel's blend weight is ``opacity * cam``, so regions that do not speak for the
    class stay plain grey and the image remains readable under the colour.
    """
    grey = to_grayscale(image)
    if cam.shape != (grey.height, grey.width):
        resized = Image.fromarray(np.asarray(cam, dtype=np.float32)).resize(
            grey.size, Image.Resampling.BILINEAR)
        cam = np.asarray(resized)
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    base = np.repeat(np.asarray(grey, dtype=np.float32)[:, :, None], 3, axis=2)
    heat = _colour_table(colormap)[np.round(cam * 255).astype(np.uint8)]
    alpha = (float(np.clip(opacity, 0.0, 1.0)) * cam)[:, :, None]
    blended = base * (1.0 - alpha) + heat * alpha
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), "RGB")
