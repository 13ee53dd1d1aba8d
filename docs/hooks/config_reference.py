"""MkDocs hook: the configuration reference, generated from kdtemp's pydantic schema at build time.

`reference/configuration.md` holds an introduction and the marker below; `on_page_markdown` replaces
the marker with one table per config section, walked from `kdtemp.config.schema.ExperimentConfig`:
every field's dotted key, type, default and description (the field's `description`, else the
docstring written under it in the model's source). Nested models are walked recursively. A union of
models is listed as "one of", the keys its members share once and each member's own keys under it:
the `teacher:`/`student:` spec (a union discriminated by `arch`) and a `kd.schedules` entry (a base
model validated by a registry: the registered schedules and a `module:function` of your own, its
subclasses). A list of a union already written out (`teachers`) points to it.

The build fails (PluginError) when the page lacks the marker, or when a leaf key of
`ExperimentConfig().model_dump()` is not among the rendered keys, so the page cannot fall behind the
schema. Nothing here restates the schema: defaults, types and descriptions are read from the models.

    python docs/hooks/config_reference.py    # prints the generated section and the key counts
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import logging
import pkgutil
import re
import textwrap
import types
import typing
from pathlib import PurePath
from typing import Any, Literal

import annotated_types
from mkdocs.exceptions import PluginError
from pydantic import BaseModel, PlainValidator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

PAGE = "reference/configuration.md"
MARKER = "<!-- config-reference -->"
TAGS = ("arch", "name")
"""The field a union's member is chosen by: a model spec's arch, a schedule's name."""

log = logging.getLogger("mkdocs.hooks.config_reference")


# --- descriptions ----------------------------------------------------------------------------------


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """The string literal under each annotated attribute of one class's own body (PEP 257 style)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = next((node.body for node in tree.body if isinstance(node, ast.ClassDef)), [])
    docs = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = following.value.value
    return docs


def _one_paragraph(text: str | None) -> str:
    return " ".join(inspect.cleandoc(text).split()) if text else ""


def _declares(cls: type, name: str) -> bool:
    return name in cls.__dict__.get("__annotations__", {})


def field_description(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    """The field's description, else the docstring of the nearest class in the MRO that declares it."""
    if field.description:
        return _one_paragraph(field.description)
    for cls in model.__mro__:
        if isinstance(cls, type) and issubclass(cls, BaseModel) and _declares(cls, name):
            if doc := _attribute_docstrings(cls).get(name):
                return _one_paragraph(doc)
    return ""


def model_description(model: type) -> str:
    return _one_paragraph(model.__dict__.get("__doc__"))


# --- types -----------------------------------------------------------------------------------------


def _constraint(meta: Any) -> str | None:
    if isinstance(meta, annotated_types.Gt):
        return f"> {meta.gt}"
    if isinstance(meta, annotated_types.Ge):
        return f"≥ {meta.ge}"
    if isinstance(meta, annotated_types.Lt):
        return f"< {meta.lt}"
    if isinstance(meta, annotated_types.Le):
        return f"≤ {meta.le}"
    if isinstance(meta, annotated_types.MinLen):
        return f"at least {meta.min_length} item{'s' if meta.min_length != 1 else ''}"
    if isinstance(meta, annotated_types.MaxLen):
        return f"at most {meta.max_length} items"
    if isinstance(getattr(meta, "pattern", None), str):
        return "`module:name`"
    for inner in getattr(meta, "metadata", None) or ():  # a FieldInfo inside Annotated
        return _constraint(inner)
    return None


def _constraints(metadata: list) -> list[str]:
    return [text for text in (_constraint(meta) for meta in metadata) if text]


SCALARS = {str: "string", int: "int", float: "float", bool: "bool", type(None): "null", Any: "any"}


def _with(text: str, limits: list[str]) -> str:
    return f"{text} ({', '.join(limits)})" if limits else text


def type_name(annotation: Any, metadata: list | None = None) -> str:
    """A type as the writer of a YAML file reads it: `int > 0 or null`, `list of float > 0`, a choice."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0], [*args[1:], *(metadata or [])])
    limits = _constraints(metadata or [])
    if origin is Literal:
        names = ", ".join(f"`{arg}`" for arg in args)
        return names if len(args) == 1 else f"one of {names}"
    if origin in (typing.Union, types.UnionType):
        text = " or ".join(type_name(arg) for arg in args if arg is not type(None))
        return _with(text + (" or null" if type(None) in args else ""), limits)
    if origin is list:
        return _with(f"list of {type_name(args[0])}", limits)
    if origin is tuple:
        return "[" + ", ".join(type_name(arg) for arg in args) + "]"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        name = "path"
    else:
        name = SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))
    bounds = [limit for limit in limits if limit[0] in "<>≤≥"]
    return _with(f"{name} {', '.join(bounds)}" if bounds else name, [x for x in limits if x not in bounds])


def _metadata(annotation: Any) -> list:
    """Everything Annotated[...] wraps around a type, outermost first."""
    found = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *meta = typing.get_args(annotation)
        found += meta
    return found


def _strip(annotation: Any) -> Any:
    """The annotation without Annotated[...] and without a `| None`."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return annotation


def is_optional(annotation: Any) -> bool:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return type(None) in typing.get_args(annotation)


def model_of(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip(annotation)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def list_item(annotation: Any) -> Any | None:
    annotation = _strip(annotation)
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else None


def _tag(model: type[BaseModel]) -> str | None:
    return next((tag for tag in TAGS if tag in model.model_fields), None)


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return list(dict.fromkeys(found))


def union_members(annotation: Any) -> list[type[BaseModel]] | None:
    """The models a value chooses between, or None if it is not a union of models.

    A plain union lists them; a base model validated by a function of its own (a PlainValidator, as a
    `kd.schedules` entry is: a registry maps its name to a class) stands for its subclasses, the ones
    with a fixed (Literal) tag first.
    """
    stripped = _strip(annotation)
    if typing.get_origin(stripped) in (typing.Union, types.UnionType):
        members = [_strip(arg) for arg in typing.get_args(stripped)]
        return members if all(model_of(member) for member in members) else None
    if model_of(stripped) and any(isinstance(meta, PlainValidator) for meta in _metadata(annotation)):
        package = importlib.import_module(stripped.__module__.rpartition(".")[0])
        for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            importlib.import_module(module.name)  # every subclass defined beside the base is known
        members = [sub for sub in _subclasses(stripped) if _tag(sub) and not sub.__name__.startswith("_")]
        fixed = [m for m in members if typing.get_origin(m.model_fields[_tag(m)].annotation) is Literal]
        return fixed + [member for member in members if member not in fixed]
    return None


def is_nested(annotation: Any) -> bool:
    """A value with its own heading: a model, a union of models, or a list of either."""
    item = list_item(annotation)
    target = annotation if item is None else item
    return bool(union_members(target) or model_of(target))


# --- defaults --------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        tag = _tag(type(value))
        return getattr(value, tag) if tag else value.model_dump(mode="json")
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def default_text(field: FieldInfo) -> str:
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel) and (tag := _tag(type(value))):
        return f"`{tag}: {getattr(value, tag)}`"
    plain = _plain(value)
    return f"`{plain}`" if isinstance(plain, str) else f"`{json.dumps(plain, ensure_ascii=False)}`"


# --- markdown --------------------------------------------------------------------------------------


def _escape(text: str) -> str:
    """Markdown-safe text: code spans kept, elsewhere &, <, >, |, * escaped."""
    parts = text.split("`")
    for index in range(0, len(parts), 2):
        part = parts[index].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts[index] = part.replace("|", "\\|").replace("*", "\\*")
    return "`".join(parts)


def _anchor(key: str) -> str:
    """The id MkDocs' toc gives the heading `key`: lowercase, dots and brackets dropped."""
    return re.sub(r"[^\w\- ]", "", key).strip().lower().replace(" ", "-")


def _shared_fields(members: list[type[BaseModel]], tag: str) -> dict[str, FieldInfo]:
    """Keys every member has, in the form most members give them (a member may override one)."""
    shared = {}
    for name in members[0].model_fields:
        if name == tag or not all(name in member.model_fields for member in members):
            continue
        forms = [repr(member.model_fields[name]) for member in members]
        common = max(set(forms), key=forms.count)
        shared[name] = next(m.model_fields[name] for m in members if repr(m.model_fields[name]) == common)
    return shared


Row = tuple[str, type[BaseModel], str, FieldInfo]
"""(dotted key, the model that has the field, the field's name, the field)."""


class Renderer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.keys: set[str] = set()
        """Every key written: a table row or a section's heading."""
        self.rows: set[str] = set()
        """The keys with a table row of their own."""
        self.unions: dict[str, str] = {}
        """A union written out (its members' names) -> the key it was written under."""

    def paragraph(self, text: str) -> None:
        if text:
            self.lines += ["", text]

    def table(self, rows: list[Row]) -> None:
        self.lines += ["", "| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key, model, name, field in rows:
            self.keys.add(key)
            self.rows.add(key)
            kind = _escape(type_name(field.annotation, field.metadata))
            description = _escape(field_description(model, name, field))
            self.lines.append(f"| `{key}` | {kind} | {default_text(field)} | {description} |")

    def fields(self, model: type[BaseModel], prefix: str, names: list[str], level: int) -> None:
        """A model's plain keys as one table, then each nested model or union under its own heading."""
        plain = [name for name in names if not is_nested(model.model_fields[name].annotation)]
        if plain:
            self.table([(f"{prefix}{name}", model, name, model.model_fields[name]) for name in plain])
        for name in names:
            if name not in plain:
                self.section(model, f"{prefix}{name}", name, level)

    def section(self, parent: type[BaseModel], key: str, name: str, level: int) -> None:
        """A nested model, a union of models, or a list of either, under the heading `key`."""
        field = parent.model_fields[name]
        item = list_item(field.annotation)
        target = field.annotation if item is None else item
        entry = key if item is None else f"{key}[]"
        members = union_members(target)
        model = model_of(target)
        description = _escape(field_description(parent, name, field))
        self.keys.add(key)
        self.lines += ["", f"{'#' * level} `{key}`"]
        null = " or null" if is_optional(field.annotation) else ""
        if item is not None:
            limits = _constraints(field.metadata)
            self.paragraph(f"{_with('A list', limits)}{null}, default {default_text(field)}. {description}")
            signature = ",".join(member.__qualname__ for member in members or [])
            if signature in self.unions:  # the entries take the keys of a union written out above
                first = self.unions[signature]
                self.paragraph(f"Each entry `{entry}` takes the keys of [`{first}`](#{_anchor(first)}).")
                return
            self.paragraph(f"Each entry, `{entry}`:")
        elif members is not None or null:
            self.paragraph(f"A mapping{null}, default {default_text(field)}. {description}".rstrip())
        else:
            self.paragraph(description)
        if members is not None:
            self.unions.setdefault(",".join(member.__qualname__ for member in members), entry)
            self.union(entry, members)
        elif model is not None:
            self.paragraph(_escape(model_description(model)))
            self.fields(model, f"{entry}.", list(model.model_fields), level + 1)

    def union(self, entry: str, members: list[type[BaseModel]]) -> None:
        """Keys every member has alike, once; then each member with the keys that are its own."""
        tag = next(tag for tag in TAGS if all(tag in member.model_fields for member in members))
        shared = _shared_fields(members, tag)
        self.paragraph(f"One of {', '.join(member.__name__ for member in members)}, chosen by `{tag}`.")
        if shared:
            base = next((c for c in members[0].__mro__ if all(_declares(c, n) for n in shared)), members[0])
            self.paragraph(f"Keys of every `{entry}`. {_escape(model_description(base))}".rstrip())
            self.table([(f"{entry}.{name}", base, name, field) for name, field in shared.items()])
        for member in members:
            fields = member.model_fields
            own = [n for n in fields if n not in shared or repr(fields[n]) != repr(shared[n])]
            choice = type_name(fields[tag].annotation, fields[tag].metadata).removeprefix("one of ")
            self.paragraph(f"**{member.__name__}**: `{tag}` {_escape(choice)}")
            self.paragraph(_escape(model_description(member)))
            if member.model_config.get("extra") == "allow":
                self.paragraph("Every other key of the entry is passed to it as a parameter.")
            self.table([(f"{entry}.{name}", member, name, fields[name]) for name in own])


def leaf_keys(tree: Any, prefix: str = "") -> set[str]:
    """The dotted keys of a model_dump() whose values are not mappings (a list is a leaf)."""
    if isinstance(tree, dict) and tree:
        return set().union(*(leaf_keys(value, f"{prefix}{key}.") for key, value in tree.items()))
    return {prefix.rstrip(".")}


def render() -> tuple[str, Renderer, set[str]]:
    """The generated markdown, the renderer (its keys and rows) and the leaf keys of the defaults."""
    from kdtemp.config.schema import ExperimentConfig

    renderer = Renderer()
    renderer.lines += ["", "### Top level"]
    renderer.fields(ExperimentConfig, "", list(ExperimentConfig.model_fields), level=3)
    return "\n".join(renderer.lines) + "\n", renderer, leaf_keys(ExperimentConfig().model_dump())


def on_page_markdown(markdown: str, page, config, files) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE} has no {MARKER} for the generated configuration reference")
    text, renderer, leaves = render()
    if missing := sorted(leaves - renderer.keys):
        raise PluginError(f"config reference: keys of ExperimentConfig().model_dump() not shown: {missing}")
    log.info(
        "config reference: %d keys in tables; all %d leaf keys of ExperimentConfig().model_dump() shown",
        len(renderer.rows),
        len(leaves),
    )
    return markdown.replace(MARKER, text)


if __name__ == "__main__":
    text, renderer, leaves = render()
    print(text)
    print(
        f"<!-- {len(renderer.rows)} keys in tables; {len(leaves)} leaf keys in the defaults' model_dump(): "
        f"{len(leaves & renderer.rows)} in tables, not shown: {sorted(leaves - renderer.keys)} -->"
    )
