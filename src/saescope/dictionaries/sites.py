"""The one record of where a dictionary reads and writes: :class:`DictionarySites`.

An SAE reads and writes ``site``. A transcoder reads ``site`` and writes ``site_out``. A multi-layer
dictionary (a CLT or crosscoder) spans ``layers``: it reads ``site``'s kind and writes ``site_out``'s kind
(default: the same) at each of them, ``site`` naming the first layer. Every other record of a dictionary
(the spec it trains from, its folder, a loaded release, an evaluation target) asks this record for its
input sites, output sites and kind instead of working them out again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from saescope.models.sites import Site, spanned_sites


@dataclass(frozen=True)
class DictionarySites:
    """Where a dictionary reads and writes (see the module docstring)."""

    site: Site
    site_out: Site | None = None
    layers: tuple[int, ...] = ()

    @property
    def input_sites(self) -> tuple[Site, ...]:
        """The sites it reads, one per layer (``site`` alone for a single-layer dictionary)."""
        return spanned_sites(self.site, self.layers)

    @property
    def output_sites(self) -> tuple[Site, ...]:
        """The sites it writes, one per input site."""
        return spanned_sites(self.site_out or self.site, self.layers)

    @property
    def transcodes(self) -> bool:
        """Whether it writes sites other than those it reads (a transcoder or CLT, not an SAE or crosscoder)."""
        return self.output_sites != self.input_sites

    def kind(self, *, skip: bool) -> str:
        """sae, transcoder, skip_transcoder, clt, skip_clt or crosscoder (``train.specs.DICTIONARY_KINDS``);
        ``skip`` says whether the dictionary has a skip connection (``DictionaryConfig.skip``)."""
        prefix = "skip_" if skip else ""
        if self.layers:
            same_kind = self.site_out is None or self.site_out.kind == self.site.kind
            return "crosscoder" if same_kind else f"{prefix}clt"
        return f"{prefix}transcoder" if self.site_out not in (None, self.site) else "sae"


class SpansSites:
    """A record of a dictionary whose ``sites`` (a :class:`DictionarySites`) give its input sites, output sites and
    whether it transcodes, worked out there alone. :class:`HoldsSites` records hold ``sites`` as a field; the spec
    to train (``train.settings.SAESpec``) makes it from its own saved fields."""

    if TYPE_CHECKING:  # a field of the holders, a property of SAESpec: declared for the type checker only

        @property
        def sites(self) -> DictionarySites: ...

    @property
    def input_sites(self) -> tuple[Site, ...]:
        """The sites it reads, one per layer."""
        return self.sites.input_sites

    @property
    def output_sites(self) -> tuple[Site, ...]:
        """The sites it writes, one per input site."""
        return self.sites.output_sites

    @property
    def transcodes(self) -> bool:
        """Whether it writes sites other than those it reads (a transcoder or CLT, not an SAE or crosscoder)."""
        return self.sites.transcodes


class HoldsSites(SpansSites):
    """A record holding its ``sites`` (a trained folder, an evaluation target, a dictionary in the explorer), with
    ``site``, ``site_out`` and ``layers`` read from them."""

    @property
    def site(self) -> Site:
        """Where it reads (for a multi-layer dictionary: at its first layer)."""
        return self.sites.site

    @property
    def site_out(self) -> Site | None:
        """Where it writes, as recorded (None: where it reads)."""
        return self.sites.site_out

    @property
    def layers(self) -> tuple[int, ...]:
        """The layers a multi-layer dictionary spans; () for one layer."""
        return self.sites.layers
