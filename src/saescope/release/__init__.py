"""Release and interoperability: Gemma Scope 1/2 layouts, SAELens format, model cards, one loader.

* :func:`export_release` writes a trained run (``<run>/saes/*/``) as a release folder in the Gemma Scope 1
  (``params.npz``), Gemma Scope 2 (``params.safetensors`` + ``config.json``) and/or SAELens
  (``cfg.json`` + ``sae_weights.safetensors``) formats, with raw-space weights (method §2.7, §6) and a
  model card.
* :func:`load_sae` loads any of those, saescope's own dictionary folders, and Hub ids, as a raw-space
  :class:`~saescope.sae.SparseDictionary` wrapped in :class:`LoadedSAE`.
"""

from __future__ import annotations

from saescope.dictionaries.folder import TrainedSAE, read_suite, read_trained_sae
from saescope.release.cards import render_model_card, write_model_card
from saescope.release.common import (
    L0_LABEL_BOUNDS,
    LoadedSAE,
    ReleaseExportError,
    ReleaseFormatError,
    ReleaseParams,
    hf_hook_point,
    l0_label,
    site_from_hf_hook,
    site_from_tl_hook,
)
from saescope.release.export import FORMATS, ReleaseSummary, export_release
from saescope.release.gemmascope import (
    export_gemmascope,
    export_gemmascope2,
    read_gemmascope2_folder,
    read_gemmascope_folder,
    read_gemmascope_npz,
    write_gemmascope2_folder,
    write_gemmascope_npz,
)
from saescope.release.load import ReleaseDownloadError, load_sae
from saescope.release.saelens import export_saelens, read_saelens_folder, saelens_config, write_saelens_folder
from saescope.release.suite import ExportedSAE
from saescope.sae.widths import GEMMA_SCOPE_WIDTH_NAMES, parse_width_name, width_name

__all__ = [
    "FORMATS",
    "GEMMA_SCOPE_WIDTH_NAMES",
    "L0_LABEL_BOUNDS",
    "ExportedSAE",
    "LoadedSAE",
    "ReleaseDownloadError",
    "ReleaseExportError",
    "ReleaseFormatError",
    "ReleaseParams",
    "ReleaseSummary",
    "TrainedSAE",
    "export_gemmascope",
    "export_gemmascope2",
    "export_release",
    "export_saelens",
    "hf_hook_point",
    "l0_label",
    "load_sae",
    "parse_width_name",
    "read_gemmascope2_folder",
    "read_gemmascope_folder",
    "read_gemmascope_npz",
    "read_saelens_folder",
    "read_suite",
    "read_trained_sae",
    "render_model_card",
    "saelens_config",
    "site_from_hf_hook",
    "site_from_tl_hook",
    "width_name",
    "write_gemmascope2_folder",
    "write_gemmascope_npz",
    "write_model_card",
    "write_saelens_folder",
]
