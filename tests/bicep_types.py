"""What the Bicep compiler would say about infra/, without the CLI: types, API ages, module wiring.

The Bicep CLI cannot be installed on these machines, so this reads each template with
tree-sitter-bicep and checks every resource body against the resource type definitions in
tests/fixtures/bicep-types (trimmed from Azure/bicep-types-az and
microsoftgraph/msgraph-bicep-types; trim.py there says how): unknown properties, writes to
read-only properties, missing required properties, values outside closed enums, primitive kinds
and string/number bounds of literals.
Values are followed through parameters (with @allowed), variables, ternaries and loop items where
they are static; anything else is left to the real compiler. It also applies the linter's
`use-recent-api-versions` rule (Azure/bicep UseRecentApiVersionRule) and its no-unused-params and
no-unused-vars rules, checks that every module is given exactly the parameters its file declares,
and evaluates expressions for given parameter values (`evaluate`) the way ARM would.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import tree_sitter
import tree_sitter_bicep

TYPES = Path(__file__).resolve().parent / "fixtures" / "bicep-types"
REQUIRED, READ_ONLY = 1, 2
# use-recent-api-versions: any stable version younger than this is fine, else only the newest...
MAX_AGE_DAYS = 730
# ...and versions in their first days are ignored (they may not have reached every region).
GRACE_DAYS = 90
# Keys Bicep itself owns in a resource body; they are not part of the ARM type's properties.
BICEP_KEYS = {"dependsOn", "scope", "parent"}
_PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))
# tree-sitter-bicep predates the `extension` keyword: the line is blanked (positions kept).
_EXTENSION = re.compile(rb"^extension\s+\w+[^\n]*$", re.MULTILINE)


class Unknown:
    """A value only the deployment knows (a function of runtime state, an output, ...)."""


UNKNOWN = Unknown()


@dataclass(frozen=True)
class Finding:
    """One problem, located as `file:line` relative to the folder checked."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Declaration:
    name: str
    node: Any
    kind: str
    type_text: str = ""
    body: Any = None
    loop: Any = None
    existing: bool = False
    decorators: list[Any] = field(default_factory=list)


def _text(node: Any) -> str:
    return node.text.decode("utf-8")


def _line(node: Any) -> int:
    return node.start_point[0] + 1


def _children(node: Any) -> list[Any]:
    return [child for child in node.named_children if child.type != "comment"]


class Template:
    """One .bicep file: its parameters, variables, resources and modules, with a small evaluator."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.rel = str(path.relative_to(root))
        source = _EXTENSION.sub(lambda m: b" " * len(m.group()), path.read_bytes())
        self.tree = _PARSER.parse(source)
        self.params: dict[str, Declaration] = {}
        self.vars: dict[str, Declaration] = {}
        self.resources: list[Declaration] = []
        self.modules: list[Declaration] = []
        pending: list[Any] = []
        for node in _children(self.tree.root_node):
            if node.type == "decorators":
                pending = [d for d in _children(node) if d.type == "decorator"]
                continue
            self._declare(node, pending)
            pending = []

    def _declare(self, node: Any, decorators: list[Any]) -> None:
        kids = _children(node)
        if node.type == "parameter_declaration":
            name = _text(kids[0])
            default = kids[2] if len(kids) > 2 else None
            self.params[name] = Declaration(
                name, node, "param", _text(kids[1]), default, decorators=decorators
            )
        elif node.type == "variable_declaration":
            self.vars[_text(kids[0])] = Declaration(_text(kids[0]), node, "var", body=kids[1])
        elif node.type in ("resource_declaration", "module_declaration"):
            body, loop = kids[-1], None
            if body.type == "for_statement":
                loop, body = body, _children(body)[-1]
            if body.type == "if_statement":
                body = _children(body)[-1]
            target = self.literal(kids[1])
            declaration = Declaration(
                _text(kids[0]),
                node,
                node.type.split("_")[0],
                target if isinstance(target, str) else "",
                body,
                loop,
                existing=any(child.type == "existing" for child in node.children),
            )
            (self.resources if declaration.kind == "resource" else self.modules).append(declaration)

    # --- values --------------------------------------------------------------------------------

    def literal(self, node: Any) -> Any:
        """The value of a literal node, or UNKNOWN."""
        if node.type == "string":
            if any(child.type == "interpolation" for child in node.named_children):
                return UNKNOWN
            raw = _text(node)
            if raw.startswith("'''"):
                return raw[3:-3]
            return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), raw[1:-1])
        if node.type == "boolean":
            return _text(node) == "true"
        if node.type == "number":
            return int(_text(node))
        if node.type == "null":
            return None
        return UNKNOWN

    def allowed(self, param: Declaration) -> list[Any] | None:
        for decorator in param.decorators:
            call = _children(decorator)[0]
            if _text(_children(call)[0]) == "allowed":
                array = _children(_children(call)[1])[0]
                return [self.literal(item) for item in _children(array)]
        return None

    def values(self, node: Any, scope: dict[str, Any]) -> tuple[str | None, set[Any] | None]:
        """(kind, possible static values) of an expression; None where it cannot be known."""
        kind = {"string": "string", "boolean": "bool", "number": "int", "null": "null"}.get(
            node.type
        )
        if kind:
            value = self.literal(node)
            return kind, None if value is UNKNOWN else {value}
        if node.type in ("object", "array"):
            return node.type, None
        if node.type == "identifier":
            name = _text(node)
            if name in scope:
                element = scope[name][1]
                return self.values(element, {}) if element is not None else (None, None)
            if name in self.params:
                param = self.params[name]
                allowed = self.allowed(param)
                return param.type_text, set(allowed) if allowed else None
            if name in self.vars:
                return self.values(self.vars[name].body, scope)
            return None, None
        if node.type == "parenthesized_expression":
            return self.values(_children(node)[0], scope)
        if node.type == "member_expression":
            return self.member_values(node, scope)
        if node.type == "ternary_expression":
            condition, left, right = _children(node)
            truth = self.truth(condition, scope)
            if truth is not None:
                return self.values(left if truth else right, scope)
            (lk, lv), (rk, rv) = self.values(left, scope), self.values(right, scope)
            kinds = {lk, rk} - {"null"}
            both = lv | rv if lv is not None and rv is not None else None
            return (kinds.pop() if len(kinds) == 1 else None), both
        if node.type == "call_expression":
            function = _text(_children(node)[0])
            if function in {"string", "join", "toLower", "toUpper", "guid", "uniqueString"}:
                return "string", None
            if function in {"length", "int"}:
                return "int", None
            if function in {"union", "toObject"}:
                return "object", None
        return None, None

    def truth(self, node: Any, scope: dict[str, Any]) -> bool | None:
        """A comparison of two static values (a loop item's field with a literal), else None."""
        if node.type == "parenthesized_expression":
            return self.truth(_children(node)[0], scope)
        if node.type != "binary_expression" or len(_children(node)) != 2:
            return None
        operator = node.children[1].type
        (_, left), (_, right) = (self.values(side, scope) for side in _children(node))
        if operator not in ("==", "!=") or not left or not right or len(left) + len(right) != 2:
            return None
        return (left == right) == (operator == "==")

    def loop_scopes(self, loop: Any) -> list[dict[str, Any]]:
        """One scope per element of the iterated array when that array is static, else one scope
        in which the loop variable is unknown."""
        params, iterated = _children(loop)[0], _children(loop)[1]
        item = (
            _text(_children(params)[0]) if params.type == "for_loop_parameters" else _text(params)
        )
        target = iterated
        if iterated.type == "identifier" and _text(iterated) in self.vars:
            target = self.vars[_text(iterated)].body
        if target.type == "array":
            return [{item: ("element", element)} for element in _children(target)]
        return [{item: ("element", None)}]

    def member_values(self, node: Any, scope: dict[str, Any]) -> tuple[str | None, set[Any] | None]:
        """`item.key` where `item` is bound to a static object (an element of a static array)."""
        base, key = _children(node)
        bound = scope.get(_text(base)) if base.type == "identifier" else None
        if not bound or bound[0] != "element" or bound[1] is None or bound[1].type != "object":
            return None, None
        for name, value, _node in properties(self, bound[1]):
            if name == _text(key):
                return self.values(value, {})
        return None, None


def properties(template: Template, obj: Any) -> Iterator[tuple[Any, Any, Any]]:
    """(key, value node, property node) of an object literal; keys that are expressions: UNKNOWN."""
    for prop in _children(obj):
        if prop.type != "object_property":
            continue
        key_node, value = _children(prop)[:2]
        key = template.literal(key_node) if key_node.type == "string" else _text(key_node)
        yield key, value, prop


# --- type definitions ----------------------------------------------------------------------------


class TypeIndex:
    """The trimmed definitions: `type@version` -> (types array, ResourceType entry)."""

    def __init__(self, folder: Path = TYPES) -> None:
        self.resources: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {}
        for path in sorted(folder.rglob("*@*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            self.resources[data[0]["name"].lower()] = (data, data[0])
        self.versions: dict[str, list[str]] = json.loads(
            (folder / "versions.json").read_text(encoding="utf-8")
        )


def _deref(data: list[dict[str, Any]], ref: dict[str, str]) -> dict[str, Any]:
    return data[int(ref["$ref"].removeprefix("#/"))]


def _closed_values(data: list[dict[str, Any]], ty: dict[str, Any]) -> set[Any] | None:
    """The literal values a type admits, or None when it admits any string/number."""
    if ty["$type"] == "StringLiteralType":
        return {ty["value"]}
    if ty["$type"] == "UnionType":
        found: set[Any] = set()
        for element in ty["elements"]:
            sub = _closed_values(data, _deref(data, element))
            if sub is None:
                return None
            found |= sub
        return found
    return None


# A parameter's declared type -> the kind `Template.values` reports for such a value.
_PARAM_KINDS = {
    "string": "string",
    "int": "int",
    "bool": "bool",
    "array": "array",
    "object": "object",
}
_KINDS = {
    "StringType": "string",
    "StringLiteralType": "string",
    "IntegerType": "int",
    "BooleanType": "bool",
    "ObjectType": "object",
    "DiscriminatedObjectType": "object",
    "ArrayType": "array",
}


class Checker:
    """Walks every resource of every template in a folder and collects findings."""

    def __init__(self, root: Path, types: TypeIndex | None = None) -> None:
        self.root = root
        self.types = types or TypeIndex()
        self.templates = {
            path.resolve(): Template(path, root) for path in sorted(root.rglob("*.bicep"))
        }
        self.findings: list[Finding] = []

    def report(self, template: Template, node: Any, message: str) -> None:
        finding = Finding(f"{template.rel}:{_line(node)}", message)
        if finding not in self.findings:  # a loop body is checked once per element
            self.findings.append(finding)

    # --- resource bodies -----------------------------------------------------------------------

    def check_types(self) -> list[Finding]:
        self.findings = []
        for template in self.templates.values():
            for resource in template.resources:
                entry = self.types.resources.get(resource.type_text.lower())
                if entry is None:
                    self.report(template, resource.node, f"{resource.type_text}: no such type")
                    continue
                data, rtype = entry
                if resource.existing:
                    continue
                body = _deref(data, rtype["body"])
                scopes = template.loop_scopes(resource.loop) if resource.loop is not None else [{}]
                for scope in scopes:
                    self.check_object(template, resource.body, body, data, "", scope, top=True)
        return self.findings

    def check_object(
        self,
        template: Template,
        obj: Any,
        ty: dict[str, Any],
        data: list[dict[str, Any]],
        path: str,
        scope: dict[str, Any],
        *,
        top: bool = False,
    ) -> None:
        if ty["$type"] == "DiscriminatedObjectType":
            ty = self._select(template, obj, ty, data, path, scope)
            if ty is None:
                return
        props: dict[str, Any] = ty.get("properties", {})
        by_lower = {name.lower(): name for name in props}
        given = set()
        for key, value, node in properties(template, obj):
            if key is UNKNOWN or (top and key in BICEP_KEYS):
                continue
            name = by_lower.get(str(key).lower())
            if name is None:
                extra = ty.get("additionalProperties")
                if extra is None:
                    self.report(template, node, f"{path}{key}: not a property of {ty.get('name')}")
                else:
                    self.check_value(template, value, _deref(data, extra), data, path + key, scope)
                continue
            if name != key:
                self.report(template, node, f"{path}{key}: the type spells it {name}")
            given.add(name)
            flags = props[name].get("flags", 0)
            if flags & READ_ONLY and not flags & REQUIRED:
                self.report(template, node, f"{path}{key}: read-only")
                continue
            self.check_value(
                template, value, _deref(data, props[name]["type"]), data, path + name, scope
            )
        for name, prop in props.items():
            flags = prop.get("flags", 0)
            if flags & REQUIRED and not flags & READ_ONLY and name not in given:
                self.report(template, obj, f"{path}{name}: required by {ty.get('name')}")

    def _select(
        self,
        template: Template,
        obj: Any,
        ty: dict[str, Any],
        data: list[dict[str, Any]],
        path: str,
        scope: dict[str, Any],
    ) -> dict[str, Any] | None:
        """The branch of a discriminated type the object's discriminator names (static only)."""
        discriminator = ty["discriminator"]
        for key, value, node in properties(template, obj):
            if key != discriminator:
                continue
            _kind, values = template.values(value, scope)
            if not values or len(values) != 1:
                return None
            (chosen,) = values
            if chosen not in ty["elements"]:
                self.report(
                    template, node, f"{path}{key}: {chosen!r} not in {sorted(ty['elements'])}"
                )
                return None
            branch = _deref(data, ty["elements"][chosen])
            return {
                "$type": "ObjectType",
                "name": branch.get("name"),
                "properties": {**ty.get("baseProperties", {}), **branch.get("properties", {})},
                "additionalProperties": branch.get("additionalProperties"),
            }
        return None

    def check_value(
        self,
        template: Template,
        value: Any,
        ty: dict[str, Any],
        data: list[dict[str, Any]],
        path: str,
        scope: dict[str, Any],
    ) -> None:
        kind = ty["$type"]
        if value.type == "object" and kind in ("ObjectType", "DiscriminatedObjectType"):
            self.check_object(template, value, ty, data, path + ".", scope)
            return
        if value.type == "array" and kind == "ArrayType":
            item = _deref(data, ty["itemType"])
            for element in _children(value):
                self.check_value(template, element, item, data, path + "[]", scope)
            return
        if value.type == "for_statement" and kind == "ArrayType":
            item = _deref(data, ty["itemType"])
            for inner in template.loop_scopes(value):
                element = _children(value)[-1]
                self.check_value(template, element, item, data, path + "[]", {**scope, **inner})
            return
        found_kind, found = template.values(value, scope)
        found = {v for v in found if v is not None} if found is not None else None
        if found_kind == "null":
            return
        want = _KINDS.get(kind)
        if kind in ("AnyType", "UnionType") or want is None:
            pass
        elif found_kind and found_kind != want:
            self.report(template, value, f"{path}: {want} expected, got {found_kind}")
            return
        closed = _closed_values(data, ty)
        if closed is not None and found:
            bad = sorted(str(v) for v in found - closed)
            if bad:
                self.report(template, value, f"{path}: {bad} not among {sorted(map(str, closed))}")
        for item in found or ():
            if isinstance(item, str) and kind == "StringType":
                if len(item) < ty.get("minLength", 0) or len(item) > ty.get("maxLength", 1 << 30):
                    self.report(template, value, f"{path}: {item!r} has the wrong length")
                if "pattern" in ty and not re.search(ty["pattern"], item):
                    self.report(template, value, f"{path}: {item!r} does not match {ty['pattern']}")
            numeric = isinstance(item, int) and kind == "IntegerType"
            if numeric and not ty.get("minValue", item) <= item <= ty.get("maxValue", item):
                self.report(template, value, f"{path}: {item} out of range")

    # --- API versions --------------------------------------------------------------------------

    def check_api_ages(self, today: date) -> list[Finding]:
        """Every resource's API version is one `use-recent-api-versions` accepts on `today`."""
        self.findings = []
        for template in self.templates.values():
            for resource in template.resources:
                rtype, _, version = resource.type_text.rpartition("@")
                if rtype.lower().startswith("microsoft.graph/"):
                    continue  # extension types are versioned by the extension, not by date
                known = set(self.types.versions.get(rtype.lower(), [])) | {version}
                fine = acceptable_versions(known, today)
                if version not in fine:
                    self.report(
                        template,
                        resource.node,
                        f"{resource.type_text} is {(today - _day(version)).days} days old; "
                        f"acceptable on {today}: {', '.join(sorted(fine))}",
                    )
        return self.findings

    # --- modules -------------------------------------------------------------------------------

    def check_modules(self) -> list[Finding]:
        """Each module gets only parameters its file declares, every one without a default, each
        of the declared kind and within its @allowed values."""
        self.findings = []
        for template in self.templates.values():
            for module in template.modules:
                target = self.templates.get((template.path.parent / module.type_text).resolve())
                if target is None:
                    self.report(template, module.node, f"{module.type_text}: no such file")
                    continue
                given: set[str] = set()
                for key, value, _node in properties(template, module.body):
                    if key != "params":
                        continue
                    for name, argument, param_node in properties(template, value):
                        given.add(str(name))
                        if name not in target.params:
                            problem = f"{module.name}: {target.rel} has no param {name}"
                            self.report(template, param_node, problem)
                            continue
                        self._check_argument(template, module, target, str(name), argument)
                for name, param in target.params.items():
                    if param.body is None and name not in given:
                        self.report(template, module.node, f"{module.name}: param {name} missing")
        return self.findings

    def _check_argument(
        self, template: Template, module: Declaration, target: Template, name: str, value: Any
    ) -> None:
        """A module argument's kind against the parameter's type, its values against @allowed."""
        param = target.params[name]
        kind, values = template.values(value, {})
        wanted = _PARAM_KINDS.get(param.type_text)
        if kind and wanted and kind != wanted:
            self.report(template, value, f"{module.name}: param {name} is {wanted}, given {kind}")
            return
        allowed = target.allowed(param)
        if allowed is not None and values is not None and not values <= set(allowed):
            bad = sorted(map(str, values - set(allowed)))
            self.report(template, value, f"{module.name}: param {name}: {bad} not allowed")

    # --- unused declarations -------------------------------------------------------------------

    def check_unused(self) -> list[Finding]:
        """The linter's no-unused-params and no-unused-vars (errors in infra/bicepconfig.json)."""
        self.findings = []
        for template in self.templates.values():
            used = _references(template.tree.root_node)
            for declared in (*template.params.values(), *template.vars.values()):
                if declared.name not in used:
                    self.report(template, declared.node, f"{declared.kind} {declared.name} unused")
        return self.findings


def _references(root: Any) -> set[str]:
    """Identifiers used as values: not declaration names, object keys or lambda parameters."""
    found: set[str] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        kids = _children(node)
        skip = set()
        if (
            node.type
            in (
                "parameter_declaration",
                "variable_declaration",
                "resource_declaration",
                "module_declaration",
                "output_declaration",
                "object_property",
            )
            and kids
        ):
            skip.add(kids[0].id)
        if node.type == "identifier" and node.id not in skip:
            found.add(_text(node))
        stack.extend(kid for kid in kids if kid.id not in skip)
    return found


def _day(version: str) -> date:
    return date.fromisoformat(version[:10])


def acceptable_versions(versions: set[str], today: date) -> set[str]:
    """The linter's rule: stable versions out of their grace period and under the age limit,
    or, when none is, the newest stable one."""
    stable = sorted(v for v in versions if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v))
    settled = [v for v in stable if (today - _day(v)).days >= GRACE_DAYS]
    recent = {v for v in settled if (today - _day(v)).days <= MAX_AGE_DAYS}
    return recent or ({settled[-1]} if settled else set(stable[-1:]))


# --- evaluation ----------------------------------------------------------------------------------


class Unresolved(LookupError):
    """An expression needs a value only the deployment has and the caller did not supply."""


def evaluate(
    template: Template,
    node: Any,
    bindings: dict[str, Any],
    externals: dict[str, Any] | None = None,
) -> Any:
    """The value of a Bicep expression for given parameter values, the way ARM would compute it,
    for the functions the infra uses. `externals` supplies what only a deployment knows, keyed by
    the expression's text (e.g. `tenant().tenantId`, `logsIngestion.outputs.immutableId`, or a
    variable's name such as `resourceToken`, whose uniqueString only ARM computes); only the
    branch a condition takes is evaluated, so outputs of modules that are off are never needed."""
    externals = externals or {}

    def ev(n: Any, scope: dict[str, Any]) -> Any:
        kind = n.type
        text = _text(n)
        if text in externals and kind in ("member_expression", "call_expression", "identifier"):
            return externals[text]
        if kind == "string":
            parts = []
            for child in n.named_children:
                if child.type == "interpolation":
                    parts.append(_render(ev(_children(child)[0], scope)))
                elif child.type == "escape_sequence":
                    char = _text(child)[1:]
                    parts.append({"n": "\n", "t": "\t"}.get(char, char))
                else:
                    parts.append(_text(child))
            return "".join(parts) if n.named_children else template.literal(n)
        if kind in ("number", "boolean", "null"):
            return template.literal(n)
        if kind == "array":
            return [ev(item, scope) for item in _children(n)]
        if kind == "object":
            return {key: ev(value, scope) for key, value, _ in properties(template, n)}
        if kind == "identifier":
            if text in scope:
                return scope[text]
            if text in template.params and template.params[text].body is not None:
                return ev(template.params[text].body, scope)
            if text in template.vars:
                return ev(template.vars[text].body, scope)
            raise Unresolved(text)
        if kind == "parenthesized_expression":
            return ev(_children(n)[0], scope)
        if kind == "unary_expression":
            value = ev(_children(n)[0], scope)
            return not value if n.children[0].type == "!" else -value
        if kind == "binary_expression":
            left, right = _children(n)
            operator = n.children[1].type
            if operator == "&&":
                return ev(left, scope) and ev(right, scope)
            if operator == "||":
                return ev(left, scope) or ev(right, scope)
            a, b = ev(left, scope), ev(right, scope)
            return {"==": a == b, "!=": a != b}[operator]
        if kind == "ternary_expression":
            condition, left, right = _children(n)
            return ev(left if ev(condition, scope) else right, scope)
        if kind == "member_expression":
            base, key = _children(n)
            value = ev(base, scope)
            if not isinstance(value, dict) or _text(key) not in value:
                raise Unresolved(text)
            return value[_text(key)]
        if kind == "subscript_expression":
            base, index = _children(n)
            return ev(base, scope)[ev(index, scope)]
        if kind == "for_statement":
            params, iterated, element = _children(n)[:3]
            names = [_text(c) for c in _children(params)] or [_text(params)]
            copies = []
            for i, item in enumerate(ev(iterated, scope)):
                inner = {**scope, names[0]: item, **({names[1]: i} if len(names) > 1 else {})}
                copies.append(ev(element, inner))
            return copies
        if kind == "lambda_expression":
            name, body = _children(n)
            return lambda item: ev(body, {**scope, _text(name): item})
        if kind == "call_expression":
            function = _text(_children(n)[0])
            args_node = _children(n)[1] if len(_children(n)) > 1 else None
            args = [ev(arg, scope) for arg in _children(args_node)] if args_node else []
            if function in ("loadTextContent", "loadJsonContent"):
                # The compiler inlines the file, relative to the template.
                content = (template.path.parent / args[0]).read_text(encoding="utf-8")
                return content if function == "loadTextContent" else json.loads(content)
            if function == "replace":
                return args[0].replace(args[1], args[2])
            return _call(function, args, text)
        raise Unresolved(f"{kind}: {text}")

    return ev(node, dict(bindings))


def _render(value: Any) -> str:
    """How ARM turns a value into text (string(), interpolation)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _call(function: str, args: list[Any], text: str) -> Any:
    if function == "string":
        return _render(args[0])
    if function == "join":
        return args[1].join(args[0])
    if function == "split":
        separators = args[1] if isinstance(args[1], list) else [args[1]]
        return re.split("|".join(map(re.escape, separators)), args[0])
    if function in ("toLower", "toUpper", "trim"):
        return {"toLower": str.lower, "toUpper": str.upper, "trim": str.strip}[function](args[0])
    if function == "empty":
        return not args[0]
    if function == "contains":
        return args[1] in args[0]
    if function == "concat":
        return (
            [item for arg in args for item in arg] if isinstance(args[0], list) else "".join(args)
        )
    if function == "union":
        merged: dict[str, Any] = {}
        for arg in args:
            merged.update(arg)
        return merged
    if function == "filter":
        return [item for item in args[0] if args[1](item)]
    if function == "map":
        return [args[1](item) for item in args[0]]
    if function == "guid":
        # A stand-in for ARM's deterministic name-based GUID (same inputs, same value).
        return str(uuid.uuid5(uuid.NAMESPACE_URL, "|".join(map(str, args))))
    if function == "items":
        return [{"key": key, "value": value} for key, value in args[0].items()]
    raise Unresolved(text)
