"""``fine inspect FILE``: what a result file is and what made it.

:func:`describe` returns a JSON-able dict: kind and schema version, whether the file
passes its kind's checks (and the problem when not), its content hash, the hash of its
input (checked against ``--input`` when given), the resolved config, seeds, package
versions, threads and determinism settings, timing, warnings, and every array's shape and
dtype. Printing it is :func:`fine_cli.console.format_inspect`'s.
"""

from __future__ import annotations

from typing import Any

from fine_cli.artifacts import INPUT_HASH, check_made_from, load
from fine_cli.config import Config, config_to_dict
from fine_cli.errors import InputFileError

# Metadata fields shown in their own rows (the rest is under "meta" in the JSON).
SHOWN = ("config", "seeds", "versions", "runtime", "timing", "warnings", "undefined")


def describe(path: str, input_path: str | None = None) -> dict[str, Any]:
    """Describe the result file at ``path`` (``-`` = standard input), damaged or not (see
    ``valid`` and ``problem``); with ``input_path``, first check that the file was made
    from that input (InputFileError, naming the fix, if not)."""
    res = load(path, validate=False)
    problem = None
    try:
        res.validate()
    except InputFileError as err:
        problem = str(err)
    _, key = INPUT_HASH.get(res.kind, ("", ""))
    out: dict[str, Any] = {
        "path": path,
        "kind": res.kind,
        "schema_version": res.meta.get("schema_version"),
        "valid": problem is None,
        "problem": problem,
        "sha256": res.sha256,
        "input": {"key": key, "sha256": res.meta.get(key)} if key else None,
        "arrays": [
            {"name": k, "shape": list(a.shape), "dtype": a.dtype.str}
            for k, a in sorted(res.arrays.items())
        ],
        **{k: res.meta.get(k) for k in SHOWN},
        "config_changes": config_changes(res.meta.get("config")),
        "meta": {k: v for k, v in res.meta.items() if k not in SHOWN},
    }
    if input_path is not None:
        source = load(input_path)
        check_made_from(res, source)
        out["input"]["checked"] = input_path
    return out


def config_changes(config: Any) -> dict[str, Any]:
    """The values of a resolved config that differ from the defaults, as dotted keys (all
    of it, flattened, when it is not a valid config of this version)."""
    if not isinstance(config, dict):
        return {}
    flat = _flatten(config)
    defaults = _flatten(config_to_dict(Config()))
    return {k: v for k, v in flat.items() if defaults.get(k, object()) != v}


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
