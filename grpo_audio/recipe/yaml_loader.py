"""A YAML loader with YAML 1.2 scalars, for recipes.

PyYAML implements YAML 1.1, where ``no``/``yes``/``on``/``off`` are booleans and ``1e-6`` is a string. Both bite
recipe writers: TRL's ``save_strategy: no`` would arrive as ``False`` and ``learning_rate: 1e-6`` as text. This
loader resolves only ``true``/``false`` as booleans and accepts exponent floats without a dot.
"""

from __future__ import annotations

import re

import yaml


class RecipeLoader(yaml.SafeLoader):
    pass


# Start from the safe resolvers minus bool and float, then add YAML 1.2's versions of those two.
_REPLACED = ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")
RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=RecipeLoader)  # a SafeLoader subclass
