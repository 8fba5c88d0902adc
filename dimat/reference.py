"""The options reference, generated from the typed schemas (`dimat/config.py`) and the option YAMLs (`conf/`).

Every documented key comes from the schema a config is checked against, with its type, its default as the option's
YAML sets it, and the comment beside it in `dimat/config.py`: the documentation cannot drift from what the config
accepts. Used by the documentation build (`docs/hooks.py`) and by `python -m dimat.reference GROUP`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import typing
from functools import lru_cache

from omegaconf import MISSING, OmegaConf

from . import config as C
from .configure import conf_dir

CONF = conf_dir()  # the checkout's conf/, or dimat/conf in an installed wheel

# groups whose options share one schema (no SCHEMAS entry): the schema is the type of Config's field
SHARED = {"merge": C.MergeConf, "network": C.NetworkConf}
NESTED = {"final_merge": C.FinalMergeConf, "budget": C.BudgetConf, "eval": C.EvalConf, "run": C.RunConf,
          "algorithm.optimizer": C.OptimizerConf}


@lru_cache(maxsize=None)
def comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of `cls` and its bases: the comment on the field's line, else the comment
    lines just above it."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        lines, start = inspect.getsourcelines(klass)
        tree = ast.parse(inspect.cleandoc("".join(lines)) if lines[0][0].isspace() else "".join(lines))
        for node in tree.body[0].body:
            if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
                continue
            line = lines[node.lineno - 1]
            text = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            if not text:
                above, k = [], node.lineno - 2
                while k >= 0 and lines[k].strip().startswith("#"):
                    above.insert(0, lines[k].strip().lstrip("#").strip())
                    k -= 1
                text = " ".join(above)
            out[node.target.id] = text
    return out


def _type(t) -> str:
    if isinstance(t, str):
        return t.replace("None", "null")
    origin = typing.get_origin(t)
    if origin is typing.Union or type(t).__name__ == "UnionType":
        return " \\| ".join(_type(a) for a in typing.get_args(t))
    if origin is list:
        return f"list[{', '.join(_type(a) for a in typing.get_args(t))}]"
    if t is type(None):
        return "null"
    return getattr(t, "__name__", str(t))


def _value(v) -> str:
    if v is None:
        return "null"
    if v is MISSING or v == "???":
        return "(required)"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"`{v:g}`"
    if isinstance(v, dict):
        return f"`{OmegaConf.to_yaml(v).strip()}`"
    return f"`{list(v) if isinstance(v, list) else v}`"


def _yaml(group: str, option: str) -> dict:
    path = CONF / group / f"{option}.yaml"
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else {}
    node = node or {}
    node.pop("defaults", None)
    return node


def _first_comment(group: str, option: str) -> str:
    """The comment that opens the option's YAML: what the option is."""
    path = CONF / group / f"{option}.yaml"
    if not path.exists():
        return ""
    head = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text and head:  # the first paragraph only
            break
        if text and not text.startswith("@package"):
            head.append(text)
    return " ".join(head).replace("<", "&lt;").replace("[", "\\[")


def options(group: str) -> list[str]:
    """The options of a group, as `group=NAME` takes them (the YAMLs of conf/<group>/)."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def schema(group: str, option: str) -> type | None:
    if group in SHARED:
        return SHARED[group]
    return C.SCHEMAS.get(group, {}).get(option)


def keys_table(cls: type, values: dict | None = None, skip: tuple[str, ...] = ("_target_", "_partial_")) -> str:
    """A markdown table of a schema's keys: name, type, default (the option's YAML's where it sets one), meaning."""
    values = values or {}
    hints = typing.get_type_hints(cls)
    notes = comments(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints.get(f.name)):
            continue
        if f.name in values:
            default = values[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = MISSING
        meaning = notes.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | {_type(hints.get(f.name, f.type))} | {_value(default)} | {meaning} |")
    return "\n".join(rows) if len(rows) > 2 else "(no keys)"


def group_reference(group: str) -> str:
    """Every option of a group with its keys, as markdown (one section per option; a group whose options share one
    schema, such as `merge` and `network`, gets the keys once and a table of what each option sets)."""
    out = []
    if group in SHARED:
        default = _default_option(group)
        out += [f"Every `{group}` option takes the same keys (defaults as `{group}={default}` sets them):\n",
                keys_table(SHARED[group], _yaml(group, default)) + "\n",
                "| option | what it is | what it sets |", "|---|---|---|"]
        for option in options(group):
            sets = ", ".join(f"`{k}={_value(v).strip('`')}`" for k, v in _yaml(group, option).items())
            out.append(f"| `{group}={option}` | {_first_comment(group, option)} | {sets or '—'} |")
        return "\n".join(out) + "\n"
    for option in options(group):
        cls = schema(group, option)
        values = _yaml(group, option)
        what = _first_comment(group, option)
        out.append(f"### `{group}={option}`\n")
        if what:
            out.append(what + "\n")
        if cls is None:  # custom: an untyped node for a user's own component
            out.append("Untyped: `_target_` names your callable, and `+" + group + ".KEY=VALUE` adds the keys it "
                       "takes (checked against its signature before anything runs).\n")
            continue
        target = values.get("_target_") or getattr(cls, "_target_", None)
        if isinstance(target, str) and target != MISSING:
            out.append(f"Builds `{target}`.\n")
        out.append(keys_table(cls, values) + "\n")
    if group == "algorithm":
        out += ["### `algorithm.optimizer.*`\n", "Every algorithm that trains takes these.\n",
                keys_table(C.OptimizerConf) + "\n"]
    if group in C.FRAMEWORK_KEYS:
        out.append(f"dimat's own keys of every `{group}` option (applied by dimat to any component, yours too): "
                   + ", ".join(f"`{k}`" for k in C.FRAMEWORK_KEYS[group]) + ".\n")
    return "\n".join(out)


def _default_option(group: str) -> str:
    """The option conf/config.yaml picks for a group."""
    for entry in OmegaConf.load(CONF / "config.yaml").defaults:
        if isinstance(entry, dict) or OmegaConf.is_dict(entry):
            for k, v in dict(entry).items():
                if k == group:
                    return v
    return options(group)[0]


def presets() -> str:
    """The presets of conf/experiment/ (`experiment=NAME`), each with the comment that opens its YAML."""
    rows = ["| preset | what it runs |", "|---|---|"]
    for path in sorted((CONF / "experiment").rglob("*.yaml")):
        name = path.relative_to(CONF / "experiment").with_suffix("").as_posix()
        rows.append(f"| `experiment={name}` | {_first_comment('experiment', name).replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def top_level() -> str:
    """The scalar keys at the top of the config, and the nested sections (eval, run, budget, final_merge)."""
    out = ["### Top-level keys\n", keys_table(C.Config, skip=("data", "partition", "model", "topology", "algorithm",
                                                              "merge", "compress", "network", "schedule", "backend",
                                                              "final_merge", "budget", "eval", "run")) + "\n"]
    for name in ("eval", "run", "budget", "final_merge"):
        out += [f"### `{name}.*`\n", keys_table(NESTED[name]) + "\n"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(top_level())
    for group in args:
        print(group_reference(group))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
