"""Exports of a feature index: Neuronpedia-style feature JSON per latent, and a static site that opens from disk.

**Neuronpedia.** One JSON object per latent with the fields of Neuronpedia's feature (``Neuron``) records:
``maxActApprox``, ``frac_nonzero``, ``pos_str``/``pos_values``/``neg_str``/``neg_values`` (logit effects),
``freq_hist_data_bar_heights``/``_values`` (activation histogram: counts and bin centres, parallel arrays),
``topkCosSimIndices``/``Values`` (decoder neighbours in the same dictionary) and ``activations``: the top
examples (``binMin`` = -1, Neuronpedia's mark of the top group) then the interval samples with their bin
``[binMin, binMax)`` and the share of firings it holds (``binContains``). Each example has ``tokens``,
``values`` (the latent's activation per token), ``maxValue``, ``maxValueTokenIndex`` and ``minValue``. The
source id (``layer``) is ``<layer>-<dictionary name without its layer prefix>``. Neuronpedia has no field for
where a latent writes, so its decoder norm per output site (``writes``; several sites for a CLT block) and the
multi-layer dictionary it belongs to (``parent``) go into the ``saescope`` object with the other extras.
A latent explained by ``saescope autointerp`` also gets Neuronpedia's ``explanations``: each description, its
explainer model and its detection score (accuracy of the scorer model on balanced contexts).

**Static site.** The explorer's own page and scripts, plus every document the server would send, written as
``data/<key>.js`` files that register themselves (``__saescope_put(key, value)``), because browsers do not
let a page opened from ``file://`` fetch JSON. The overview, dictionary and feature pages work; live search
and steering need the server and are hidden.
"""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm import tqdm

from saescope.atomic import atomic_directory
from saescope.explore.sources import NAME_PATTERN, safe_name
from saescope.explore.store import IndexReader, SaeRow

STATIC_PACKAGE = "saescope.explore"
STATIC_FOLDER = "static"
_LAYER_PREFIX = re.compile(r"^layer_\d+[-_]")


def neuronpedia_source_id(sae: SaeRow) -> str:
    """Neuronpedia's ``layer`` field: ``<layer>-<set name>``, e.g. ``6-res-jumprelu-1024-l0_40``."""
    layer = sae.site.split("/")[0].removeprefix("layer_")
    return f"{layer}-{_LAYER_PREFIX.sub('', sae.name)}"


def neuronpedia_feature(reader: IndexReader, sae: SaeRow, feature: dict[str, Any]) -> dict[str, Any]:
    """One latent as a Neuronpedia feature record (see the module docstring); ``feature`` is
    :meth:`IndexReader.feature`'s document for it."""
    width = feature["histogram"]["bin_width"]
    counts = feature["histogram"]["counts"]
    activations = [_neuronpedia_example(example, -1.0, -1.0, -1.0) for example in feature["top_examples"]]
    for interval in feature["intervals"]:
        for example in interval["examples"]:
            activations.append(_neuronpedia_example(example, interval["lo"], interval["hi"], interval["share"]))
    same = [n for n in feature["neighbours"] if n["sae"] == sae.name]
    return {
        "modelId": safe_name(str(reader.meta.get("model", "model"))).lower(),
        "layer": neuronpedia_source_id(sae),
        "index": str(feature["latent"]),
        "maxActApprox": feature["max_activation"],
        "frac_nonzero": feature["density"],
        "pos_str": [t["token"] for t in feature["top_logits"]],
        "pos_values": [t["value"] for t in feature["top_logits"]],
        "neg_str": [t["token"] for t in feature["bottom_logits"]],
        "neg_values": [t["value"] for t in feature["bottom_logits"]],
        "freq_hist_data_bar_heights": counts,
        "freq_hist_data_bar_values": [(j + 0.5) * width for j in range(len(counts))],
        "logits_hist_data_bar_heights": [],
        "logits_hist_data_bar_values": [],
        "topkCosSimIndices": [n["latent"] for n in same],
        "topkCosSimValues": [n["cosine"] for n in same],
        "activations": activations,
        "saescope": {
            "dictionary": sae.name, "site": sae.site, "latent": feature["latent"], "fire_count": feature["fire_count"],
            "n_tokens": feature["n_tokens"], "dead": feature["dead"], "corpus": reader.meta.get("corpus"),
            "parent": feature["parent"], "writes": feature["writes"],
        },
        **_neuronpedia_explanations(feature.get("autointerp", [])),
    }  # fmt: skip


def _neuronpedia_explanations(autointerp: list[dict[str, Any]]) -> dict[str, Any]:
    """Neuronpedia's ``explanations`` (description, explainer model, detection score), when the latent has any
    (``saescope autointerp``); nothing otherwise, so a record without them keeps its old shape."""
    if not autointerp:
        return {}
    return {
        "explanations": [
            {
                "description": row["explanation"], "explanationModelName": row["explainer"],
                "typeName": "saescope-detection",
                "scores": [] if row["detection"] is None else [
                    {"value": row["detection"], "explanationScoreModelName": row["scorer"],
                     "explanationScoreTypeName": "detection"},
                ],
            }
            for row in autointerp
        ]
    }  # fmt: skip


def _neuronpedia_example(example: dict[str, Any], lo: float, hi: float, share: float) -> dict[str, Any]:
    values = example["acts"]
    peak = max(range(len(values)), key=values.__getitem__)
    return {
        "tokens": example["tokens"],
        "values": values,
        "maxValue": values[peak],
        "maxValueTokenIndex": peak,
        "minValue": min(values),
        "binMin": lo,
        "binMax": hi,
        "binContains": share,
        "dataIndex": example["window"],
    }


def _checked_name(name: str) -> str:
    """A dictionary name as a file or folder name: refuse anything that is not a plain safe name."""
    if not NAME_PATTERN.match(name) or set(name) <= {"."}:
        raise ValueError(f"dictionary name {name!r} is not a safe file name; rebuild the index")
    return name


def write_neuronpedia(reader: IndexReader, out: Path, *, progress: bool = True) -> int:
    """``out/<dictionary>/<latent>.json`` for every latent; returns the number of files written."""
    written = 0
    with atomic_directory(out) as staging:
        for sae in reader.saes:
            folder = staging / _checked_name(sae.name)
            for latent in tqdm(range(sae.width), desc=f"neuronpedia: {sae.name}", disable=not progress):
                feature = reader.feature(sae, latent)
                assert feature is not None
                record = neuronpedia_feature(reader, sae, feature)
                _write(folder / f"{latent}.json", json.dumps(record, separators=(",", ":")))
                written += 1
    return written


def _write(path: Path, data: str | bytes) -> None:
    """A file inside an ``atomic_directory`` staging folder: the folder is published whole, by one rename,
    so its files need no rename (or fsync) of their own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _script(key: str, value: Any) -> str:
    return f"__saescope_put({json.dumps(key)},{json.dumps(value, separators=(',', ':'))});\n"


def _copy_package_static(target: Path) -> None:
    source = resources.files(STATIC_PACKAGE).joinpath(STATIC_FOLDER)
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        if entry.is_file():
            with resources.as_file(entry) as path:
                shutil.copyfile(path, target / entry.name)


def write_static_site(reader: IndexReader, out: Path, *, progress: bool = True) -> int:
    """The explorer as files (see the module docstring): open ``out/index.html``. Returns the file count."""
    with atomic_directory(out) as staging:
        _copy_package_static(staging / STATIC_FOLDER)
        shutil.move(staging / STATIC_FOLDER / "index.html", staging / "index.html")
        _write(staging / STATIC_FOLDER / "mode.js", "window.SAESCOPE_STATIC = true;\n")
        data = staging / "data"
        _write(data / "suite.js", _script("suite", reader.suite()))
        for name in reader.asset_names():
            asset = reader.asset(name)
            assert asset is not None
            _write(data / "assets" / _checked_name(name), asset[1])
        for sae in reader.saes:
            name = _checked_name(sae.name)
            _write(data / "saes" / f"{name}.js", _script(f"saes/{name}", {"sae": sae.to_dict()}))
            _, rows = reader.latents(sae, limit=sae.width)
            _write(data / "saes" / name / "latents.js", _script(f"saes/{name}/latents", rows))
            for latent in tqdm(range(sae.width), desc=f"static site: {name}", disable=not progress):
                key = f"saes/{name}/latents/{latent}"
                _write(data / "saes" / name / "latents" / f"{latent}.js", _script(key, reader.feature(sae, latent)))
    return sum(1 for path in out.rglob("*") if path.is_file())
