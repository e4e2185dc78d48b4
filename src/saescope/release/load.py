"""One loader for every dictionary format saescope knows: :func:`load_sae`.

============================  ==========================================================  ================
what                          recognised by                                               ``source_format``
============================  ==========================================================  ================
Gemma Scope 1 folder          ``params.npz``                                              ``gemmascope``
Gemma Scope 2 folder          ``params.safetensors`` (+ ``config.json``)                  ``gemmascope2``
Gemma Scope 2 CLT/crosscoder  ``params_layer_0.safetensors`` ... (+ ``config.json``)       ``gemmascope2``
SAELens folder                ``cfg.json`` + ``sae_weights.safetensors``                  ``saelens``
saescope dictionary folder    ``sae.safetensors`` + ``config.json`` (saescope-dictionary)  ``saescope``
Hugging Face Hub id           ``owner/repo/path/in/repo`` that is not a local path          as downloaded
============================  ==========================================================  ================

Whatever the source, the result is a raw-space dictionary (a saescope dictionary is folded with its
recorded scale C, method §2.7): a :class:`~saescope.sae.SparseDictionary`, or for a CLT or crosscoder a
:class:`~saescope.sae.CrossLayerDictionary` with ``layers`` set, so the same code evaluates and browses
all of them. Hub downloads are off unless ``online=True`` or ``SAESCOPE_ONLINE=1``, as for models.
"""

from __future__ import annotations

import re
from pathlib import Path

from saescope.atomic import verify_checksum
from saescope.dictionaries.folder import CONFIG as SAESCOPE_CONFIG
from saescope.dictionaries.folder import WEIGHTS as SAESCOPE_WEIGHTS
from saescope.dictionaries.folder import is_dictionary_folder, read_trained_sae
from saescope.models.loading import ONLINE_ENV, online_by_default
from saescope.release.common import LoadedSAE, ReleaseFormatError, check_against_manifest
from saescope.release.gemmascope import (
    GS1_PARAMS,
    GS2_CONFIG,
    GS2_PARAMS,
    read_gemmascope2_folder,
    read_gemmascope_folder,
)
from saescope.release.multilayer import is_multi_layer_folder, multi_layer_files, read_multi_layer_folder
from saescope.release.saelens import SAELENS_CONFIG, SAELENS_WEIGHTS, read_saelens_folder

#: Weight files, whose SHA-256 is recorded beside them (``<name>.sha256``) by saescope's writers.
WEIGHT_SUFFIXES = (".safetensors", ".npz")
_EXPORT_AGAIN = (
    "If saescope exported it, export the release again from the training run (`saescope export`); otherwise "
    "download or copy the folder again."
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)+/?$")


class ReleaseDownloadError(ValueError):
    """A Hub id was given but it cannot be downloaded (downloads off, or the Hub refused)."""


def _detect(folder: Path) -> str | None:
    if is_dictionary_folder(folder):
        return "saescope"
    if (folder / GS1_PARAMS).is_file():
        return "gemmascope"
    if (folder / GS2_PARAMS).is_file() or is_multi_layer_folder(folder):
        return "gemmascope2"
    if (folder / SAELENS_CONFIG).is_file() or (folder / SAELENS_WEIGHTS).is_file():
        return "saelens"
    return None


_FILES = {
    "gemmascope": (GS1_PARAMS,),
    "gemmascope2": (GS2_PARAMS, GS2_CONFIG),
    "saelens": (SAELENS_CONFIG, SAELENS_WEIGHTS),
    "saescope": (SAESCOPE_WEIGHTS, SAESCOPE_CONFIG),
}


def load_folder(folder: Path, *, check_hashes: bool = True, repo_name: str | None = None) -> LoadedSAE:
    """Load one local SAE folder of any supported format (see the module docstring)."""
    source_format = _detect(folder)
    if source_format is None:
        raise ReleaseFormatError(
            f"{folder} is not a dictionary folder: expected {GS1_PARAMS} (Gemma Scope 1), {GS2_PARAMS} + "
            f"{GS2_CONFIG} (Gemma Scope 2), {SAELENS_CONFIG} + {SAELENS_WEIGHTS} (SAELens) or "
            f"{SAESCOPE_WEIGHTS} + {SAESCOPE_CONFIG} (saescope)"
        )
    multi_layer = source_format == "gemmascope2" and is_multi_layer_folder(folder)
    files = multi_layer_files(folder) if multi_layer else [folder / name for name in _FILES[source_format]]
    present = [path for path in files if path.exists()]
    checked_by_manifest = check_against_manifest(present, check_hashes=check_hashes)
    if check_hashes and source_format != "saescope":  # a saescope folder's weights are checked as they are read
        for path in present:
            if path.suffix in WEIGHT_SUFFIXES and path.resolve() not in checked_by_manifest:
                verify_checksum(path, _EXPORT_AGAIN)
    if multi_layer:
        return read_multi_layer_folder(folder)
    if source_format == "gemmascope":
        return read_gemmascope_folder(folder, repo_name=repo_name)
    if source_format == "gemmascope2":
        return read_gemmascope2_folder(folder)
    if source_format == "saelens":
        return read_saelens_folder(folder)
    return _read_saescope_folder(folder)


def _read_saescope_folder(folder: Path) -> LoadedSAE:
    entry = read_trained_sae(folder)
    metadata = {
        "path": str(folder),
        "config": entry.config,
        "metrics": entry.metrics,
        "norm_scale": entry.norm_scale,
        "l0": entry.l0,
        "l0_source": entry.l0_source,
    }
    model = entry.config.get("model")
    return LoadedSAE(entry.raw_space(), entry.sites, str(model) if model else None, "saescope", metadata)


def _download(hub_id: str, online: bool | None) -> tuple[Path, str]:
    allowed = online_by_default() if online is None else online
    if not allowed:
        raise ReleaseDownloadError(
            f"{hub_id!r} is not a local file or folder, and as a Hugging Face Hub id it needs a download, which is "
            f"off by default: set {ONLINE_ENV}=1 (or pass online=True) to let saescope download it, or download the "
            "folder yourself and pass its local path"
        )
    owner, repo, subpath = hub_id.strip("/").split("/", 2)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:  # pragma: no cover - huggingface_hub comes with transformers
        raise ReleaseDownloadError("downloading from the Hub needs the huggingface_hub package") from error
    try:
        root = snapshot_download(f"{owner}/{repo}", allow_patterns=[f"{subpath}/*"])
    except Exception as error:
        raise ReleaseDownloadError(
            f"could not download {subpath!r} from the Hub repo {owner}/{repo}: {error}"
        ) from error
    folder = Path(root) / subpath
    if not folder.is_dir():
        raise ReleaseDownloadError(f"the Hub repo {owner}/{repo} has no folder {subpath!r}")
    return folder, repo


def load_sae(path_or_hub_id: str | Path, *, online: bool | None = None, check_hashes: bool = True) -> LoadedSAE:
    """Load a sparse dictionary from a local folder (or a file inside one) or a Hugging Face Hub id.

    Local: a Gemma Scope 1 ``average_l0_N`` folder, a Gemma Scope 2 folder (SAEs and transcoders, with
    ``affine_skip_connection``), a SAELens folder, or a saescope dictionary folder (``<run>/saes/<name>``,
    folded into raw space with its ``norm_scale``). Hub: ``owner/repo/path``, e.g.
    ``google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71``; downloads only with ``online=True``
    or ``SAESCOPE_ONLINE=1``. Inside a saescope release, file sizes (and with ``check_hashes`` SHA-256
    sums) are checked against its manifest; elsewhere (with ``check_hashes``) each weight file against the
    SHA-256 recorded beside it, when there is one. Problems raise :class:`ReleaseFormatError` naming the file,
    or :class:`~saescope.atomic.CorruptFileError` for a weight file that does not match its recorded SHA-256.
    """
    path = Path(path_or_hub_id)
    if path.is_file():
        path = path.parent
    if path.is_dir():
        return load_folder(path, check_hashes=check_hashes)
    text = str(path_or_hub_id)
    if isinstance(path_or_hub_id, str) and _HUB_ID.match(text) and not text.startswith((".", "/", "~")):
        folder, repo = _download(text, online)
        loaded = load_folder(folder, check_hashes=False, repo_name=repo)
        loaded.metadata["hub_id"] = text
        return loaded
    raise FileNotFoundError(
        f"{text} does not exist (and is not a Hub id of the form owner/repo/path/in/repo, e.g. "
        "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71)"
    )
