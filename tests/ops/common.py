"""Rendering and validating the deployment files: kustomize, Kubernetes schemas, CRD schemas, promtool."""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = Path(__file__).resolve().parent / "crds"
OVERLAYS = ("dev", "summit")
KUBERNETES_VERSION = "1.32.0"
"""The schemas core objects are checked against (kubectl's own version here)."""


def tool(name: str) -> str:
    """The path of a command-line tool ``make setup`` installs; a clear failure if it is missing."""
    local = ROOT / ".venv" / "bin" / name
    found = shutil.which(name) or (str(local) if local.exists() else None)
    assert found, f"{name} is not installed: run `make setup` (it installs what the ops tests need)"
    return found


def _kustomize_command() -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return [tool("kustomize"), "build"]


@functools.cache
def _render_text(directory: str) -> str:
    result = subprocess.run(
        [*_kustomize_command(), directory], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kustomize failed on {directory}:\n{result.stderr}"
    return result.stdout


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects of ``k8s/overlays/<overlay>`` as kustomize renders them (fresh copies)."""
    text = _render_text(str(ROOT / "k8s" / "overlays" / overlay))
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


# -- core objects: kubernetes-validate, strict (unknown fields are errors)


def core_errors(obj: dict[str, Any]) -> list[str]:
    """Why ``obj`` (a core Kubernetes object) is not valid, strictly; empty if it is."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(part) for part in getattr(exc, "path", []))
        return [f"/{path}: {getattr(exc, 'message', exc)}"]
    except Exception as exc:
        return [f"{type(exc).__name__}: {exc}"]
    return []


# -- custom resources: the CRDs' openAPIV3Schema made strict


def _strict(node: Any) -> Any:
    """A CRD schema node with unknown properties forbidden (unless it preserves unknown fields)."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-validations")}
    if node.pop("x-kubernetes-int-or-string", False):
        node.pop("type", None)
        node["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    return node


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """Strict JSON Schemas by (apiVersion, kind), from every served version of the vendored CRDs."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served", True):
                continue
            api_version = f"{group}/{version['name']}"
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema.setdefault("properties", {})
            schema["properties"]["apiVersion"] = {"enum": [api_version]}
            schema["properties"]["kind"] = {"enum": [kind]}
            schema["properties"]["metadata"] = {"type": "object"}
            schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
            found[(api_version, kind)] = schema
    return found


def cr_errors(obj: dict[str, Any]) -> list[str]:
    """Why ``obj`` (a custom resource) does not match its CRD's schema; every error, not the first."""
    schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        return [f"no CRD serves {obj['apiVersion']} {obj['kind']}"]
    validator = jsonschema.Draft7Validator(schema)
    return [f"/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def is_core(obj: dict[str, Any]) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return group in ("", "apps", "batch", "policy", "networking.k8s.io", "rbac.authorization.k8s.io")


def errors(obj: dict[str, Any]) -> list[str]:
    """Schema errors of any rendered object: core schemas or its CRD's."""
    return core_errors(obj) if is_core(obj) else cr_errors(obj)
