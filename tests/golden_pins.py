"""Golden pins of trained dictionaries: the sha256 of every saved tensor and the saved config (final metrics,
scales, training settings) of each dictionary of a training folder, compared bit for bit with a checked-in JSON.

A change that is meant to change what training produces regenerates the pins: run the test again with
SAESCOPE_REGENERATE_GOLDEN=1 in the environment, check the diff of the JSON, and commit it with the change.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from saescope.dictionaries.folder import DICTIONARY_CONFIG_SCHEMA
from saescope.train.settings import TRAIN_CONFIG_SCHEMA

REGENERATE = "SAESCOPE_REGENERATE_GOLDEN"


def tensor_digests(path: Path) -> dict[str, str]:
    """Tensor name -> sha256 of its dtype, shape and bytes."""
    digests = {}
    for name, tensor in sorted(load_file(str(path)).items()):
        header = f"{tensor.dtype}{tuple(tensor.shape)}".encode()
        digests[name] = hashlib.sha256(header + tensor.contiguous().numpy().tobytes()).hexdigest()
    return digests


def training_pins(train_dir: Path) -> dict[str, Any]:
    """Every dictionary of a training folder (`train_dir/saes/<name>/`): its tensor digests and saved config."""
    pins = {}
    for folder in sorted(path for path in (train_dir / "saes").iterdir() if path.is_dir()):
        pins[folder.name] = {
            "tensors": tensor_digests(folder / "sae.safetensors"),
            "config": json.loads((folder / "config.json").read_text(encoding="utf-8")),
        }
    return pins


def current_config(config: dict[str, Any], origin: str) -> dict[str, Any]:
    """A dictionary's saved config.json in today's form (`saescope.versions`): a pin written before configs
    carried a schema_version still pins the same settings, and a config missing a field today's saescope saves
    (or holding another value) still differs from it."""
    current = DICTIONARY_CONFIG_SCHEMA.migrate(config, origin=origin)
    if isinstance(current.get("training"), dict):
        current["training"] = TRAIN_CONFIG_SCHEMA.migrate(current["training"], origin=f"{origin}, training")
    return current


def check_against_golden(train_dir: Path, golden: Path) -> None:
    """Assert that `train_dir` holds exactly the pinned dictionaries (or write the pins when regenerating)."""
    pins = training_pins(train_dir)
    if os.environ.get(REGENERATE) == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        return
    assert golden.is_file(), f"no golden pins at {golden}; create them with {REGENERATE}=1"
    expected = json.loads(golden.read_text(encoding="utf-8"))
    how = (
        f"if this change is meant to change what training produces, regenerate {golden.name} by running this test "
        f"with {REGENERATE}=1 and commit the reviewed diff"
    )
    assert sorted(pins) == sorted(expected), f"other dictionaries than pinned: {sorted(pins)}; {how}"
    for name, pin in pins.items():
        saved, pinned = current_config(pin["config"], name), current_config(expected[name]["config"], golden.name)
        assert saved == pinned, f"{name}: saved config differs from the pin; {how}"
        assert pin["tensors"] == expected[name]["tensors"], f"{name}: trained weights differ from the pin; {how}"
