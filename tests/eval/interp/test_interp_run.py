"""`run_interp` takes the targets site by site, sharing a site's data between its dictionaries only, marks
multi-layer dictionaries skipped, and returns the results in the targets' order."""

from __future__ import annotations

from typing import Any

import torch
from interp_dictionaries import planted_dictionary

from saescope.dictionaries.sites import DictionarySites
from saescope.eval.evaluate import EvalTarget
from saescope.eval.interp.common import InterpOptions
from saescope.eval.interp.run import interp_table, run_interp
from saescope.models.sites import Site


class Counted:
    def __init__(self, value: float) -> None:
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def summary(self) -> dict[str, float]:
        return {"value": self.value}


def test_targets_are_taken_site_by_site_and_multi_layer_ones_are_skipped() -> None:
    sae = planted_dictionary(torch.eye(4), torch.eye(4))
    targets = [
        EvalTarget("b6", DictionarySites(Site.parse("layer_6/res")), sae),
        EvalTarget("a2", DictionarySites(Site.parse("layer_2/res")), sae),
        EvalTarget("c6", DictionarySites(Site.parse("layer_6/res")), sae),
        EvalTarget("clt", DictionarySites(Site.parse("layer_0/mlp"), layers=(0, 1)), sae),
    ]
    computed: list[tuple[str, Site]] = []

    def metric(target: EvalTarget, _loaded: Any, options: InterpOptions) -> Counted:
        if target.site not in options.shared:  # the site's data: computed once, by its first dictionary
            computed.append((target.name, target.site))
            options.shared[target.site] = len(computed)
        return Counted(float(options.shared[target.site]))

    results = run_interp(None, targets, {"count": metric}, InterpOptions())  # type: ignore[arg-type]
    assert list(results) == ["b6", "a2", "c6", "clt"]
    assert computed == [("a2", Site.parse("layer_2/res")), ("b6", Site.parse("layer_6/res"))]
    assert results["c6"]["count"]["value"] == results["b6"]["count"]["value"] == 2.0
    assert "skipped" in results["clt"]["count"]
    table = interp_table(results)
    assert "| dictionary | count: value |" in table
    assert "| clt |  |" in table
