"""saescope.dictionaries.sites: a dictionary's input sites, output sites and kind, worked out in one place."""

from __future__ import annotations

import pytest

from saescope.dictionaries import DictionarySites
from saescope.models.sites import Site

RES_1 = Site.parse("layer_1/res")
MLP_IN_1 = Site.parse("layer_1/mlp_in")
MLP_1 = Site.parse("layer_1/mlp")


def test_an_sae_reads_and_writes_its_site() -> None:
    sites = DictionarySites(RES_1)
    assert sites.input_sites == sites.output_sites == (RES_1,)
    assert not sites.transcodes
    assert sites.kind(skip=False) == "sae"


def test_a_transcoder_reads_one_site_and_writes_another() -> None:
    sites = DictionarySites(MLP_IN_1, MLP_1)
    assert (sites.input_sites, sites.output_sites) == ((MLP_IN_1,), (MLP_1,))
    assert sites.transcodes
    assert sites.kind(skip=False) == "transcoder"
    assert sites.kind(skip=True) == "skip_transcoder"


def test_an_output_site_equal_to_the_input_is_an_sae() -> None:
    assert DictionarySites(RES_1, RES_1).kind(skip=False) == "sae"


def test_a_multi_layer_dictionary_spans_its_layers() -> None:
    clt = DictionarySites(MLP_IN_1, MLP_1, (1, 2))
    assert clt.input_sites == (MLP_IN_1, Site.parse("layer_2/mlp_in"))
    assert clt.output_sites == (MLP_1, Site.parse("layer_2/mlp"))
    assert clt.kind(skip=True) == "skip_clt"
    crosscoder = DictionarySites(RES_1, None, (1, 3))
    assert crosscoder.output_sites == crosscoder.input_sites == (RES_1, Site.parse("layer_3/res"))
    assert not crosscoder.transcodes
    assert crosscoder.kind(skip=False) == "crosscoder"


@pytest.mark.parametrize("skip", [False, True])
def test_kinds_are_among_the_training_kinds(skip: bool) -> None:
    from saescope.train.specs import DICTIONARY_KINDS

    for sites in (DictionarySites(RES_1), DictionarySites(MLP_IN_1, MLP_1), DictionarySites(MLP_IN_1, MLP_1, (1, 2))):
        assert sites.kind(skip=skip) in DICTIONARY_KINDS


def test_every_record_of_a_dictionary_gets_its_sites_from_the_one_record() -> None:
    import dataclasses

    from saescope.dictionaries import HoldsSites, SpansSites
    from saescope.dictionaries.folder import TrainedSAE
    from saescope.eval.evaluate import EvalTarget
    from saescope.explore.sources import Dictionary
    from saescope.train.settings import SAESpec
    from saescope.train.trainer import TrainedDictionary

    for record in (SAESpec, TrainedDictionary, TrainedSAE, EvalTarget, Dictionary):
        assert issubclass(record, SpansSites), record
        for name in ("input_sites", "output_sites", "transcodes"):
            assert name not in vars(record), f"{record.__name__} works out {name} itself"
    for holder in (
        TrainedDictionary,
        TrainedSAE,
        EvalTarget,
        Dictionary,
    ):  # one DictionarySites field, no site fields of its own
        assert issubclass(holder, HoldsSites), holder
        names = {f.name for f in dataclasses.fields(holder)}
        assert "sites" in names, holder
        assert not names & {"site", "site_out", "layers"}, holder
