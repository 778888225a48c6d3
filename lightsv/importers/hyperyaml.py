"""Read SpeechBrain's hyperpyyaml files as data, never as code.

hyperpyyaml's tags (``!new:``, ``!name:``, ``!ref``, ``!apply:`` ...) would import and run Python; a
model file from elsewhere must not do that here. Every tag becomes a :class:`Tagged` value, and only
plain references (``!ref <name>``) are resolved, on request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightsv.errors import CheckpointError


@dataclass
class Tagged:
    tag: str  # e.g. "!new:speechbrain.lobes.features.Fbank"
    value: Any  # the mapping, sequence or scalar under the tag

    @property
    def target(self) -> str:
        """The dotted name after ``!new:`` / ``!name:``; "" for other tags."""
        return self.tag.split(":", 1)[1] if ":" in self.tag else ""


class _Loader(yaml.SafeLoader):
    pass


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Tagged:
    value: Any
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)  # type: ignore[arg-type]  # a ScalarNode here
    return Tagged("!" + suffix, value)


_Loader.add_multi_constructor("!", _tagged)
_REF = re.compile(r"^<([A-Za-z_][\w.]*)>$")


class HyperYaml:
    """The top-level mapping of a hyperpyyaml file, with `resolve` for ``!ref <name>`` values."""

    def __init__(self, path: Path):
        self.path = path
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise CheckpointError(f"{path}: cannot be read as YAML ({type(err).__name__}: {err})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{path}: expected a YAML mapping at the top, got {type(data).__name__}")
        self.data = data

    def resolve(self, value: Any, where: str, depth: int = 0) -> Any:
        """`value` with ``!ref <name>`` replaced by what name holds (recursively); other tags stay."""
        if isinstance(value, Tagged) and value.tag == "!ref":
            match = _REF.match(str(value.value).strip())
            if not match or depth > 20:
                raise CheckpointError(
                    f"{self.path}: {where} is {value.value!r}; only plain references like <n_mels> are read"
                )
            node: Any = self.data
            for part in match.group(1).split("."):
                if not isinstance(node, dict) or part not in node:
                    raise CheckpointError(f"{self.path}: {where} refers to <{match.group(1)}>, which is not defined")
                node = node[part]
            return self.resolve(node, where, depth + 1)
        if isinstance(value, list):
            return [self.resolve(v, where, depth) for v in value]
        return value

    def object(self, key: str, expected: tuple[str, ...]) -> dict:
        """The resolved arguments of ``key: !new:<one of expected>``; CheckpointError naming what differs."""
        if key not in self.data:
            raise CheckpointError(f"{self.path}: no {key!r} entry")
        node = self.resolve(self.data[key], key)
        if not isinstance(node, Tagged) or node.tag.split(":", 1)[0] != "!new":
            raise CheckpointError(f"{self.path}: {key} is not a !new: object")
        if node.target not in expected:
            raise CheckpointError(f"{self.path}: {key} is {node.target}; supported: {', '.join(expected)}")
        args = node.value if isinstance(node.value, dict) else {}
        if node.value not in (None, "") and not isinstance(node.value, dict):
            raise CheckpointError(f"{self.path}: {key} takes positional arguments; only keyword arguments are read")
        return {k: self.resolve(v, f"{key}.{k}") for k, v in args.items()}
