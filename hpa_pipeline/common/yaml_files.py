"""Reading the project's YAML files (recipes, run configurations) safely.

``yaml.safe_load`` already refuses tags that build objects (``!!python/object``); this also
refuses a file that uses more than :data:`MAX_ALIASES` aliases, because anchors and aliases can
describe a structure exponentially larger than the file (a "billion laughs": 1 KB that expands
into gigabytes when the values are used). Recipes and run configurations need none.
"""
from __future__ import annotations

import yaml

MAX_ALIASES = 16


class _AliasCountingLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that stops after :data:`MAX_ALIASES` aliases."""

    aliases_seen = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen += 1
            if self.aliases_seen > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} YAML aliases (*name): refused, as a structure that "
                                     f"could expand without bound")
        return super().compose_node(parent, index)


def load_yaml(text: str):
    """The value of a YAML document, as ``yaml.safe_load``, with aliases limited."""
    return yaml.load(text, Loader=_AliasCountingLoader)  # noqa: S506 - a SafeLoader subclass
