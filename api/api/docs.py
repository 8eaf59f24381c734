"""The page for people at /docs: plain HTML written from the OpenAPI document, so there is one description
of the API and the page needs nothing from elsewhere (no script, no stylesheet from a CDN)."""

from __future__ import annotations

from html import escape
from typing import Any


def _schema(schema: dict[str, Any]) -> str:
    if "enum" in schema:
        text = " | ".join(str(v) for v in schema["enum"])
    elif schema.get("type") == "array":
        text = f"list of {_schema(schema['items'])}"
    else:
        text = schema.get("format", schema.get("type", ""))
    if "pattern" in schema:
        text += f" matching {schema['pattern']}"
    if "minimum" in schema:
        text += f", {schema['minimum']} to {schema['maximum']}"
    if "default" in schema:
        text += f" (default {schema['default']})"
    return text


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
        f"<td>{'yes' if p.get('required') else 'no'}</td><td>{escape(_schema(p['schema']))}</td>"
        f"<td>{escape(p.get('description', ''))}</td></tr>"
        for p in op.get("parameters", [])
    )
    responses = "".join(
        f"<li><b>{escape(code)}</b> {escape(r['description'])} ({escape(', '.join(r.get('content', {})))})</li>"
        for code, r in op["responses"].items()
    )
    return (
        f'<h2 id="{escape(op["operationId"])}"><code>{method.upper()} {escape(path)}</code></h2>'
        f"<p>{escape(op['summary'])}</p><p>{escape(op.get('description', ''))}</p>"
        + (f"<table><tr><th>parameter</th><th>in</th><th>required</th><th>value</th><th></th></tr>{rows}</table>"
           if rows else "")
        + f"<ul>{responses}</ul>"
    )


def page(spec: dict[str, Any]) -> str:
    info = spec["info"]
    operations = [(path, method, op) for path, item in spec["paths"].items() for method, op in item.items()]
    index = "".join(
        f'<li><a href="#{escape(op["operationId"])}"><code>{method.upper()} {escape(path)}</code></a>'
        f" {escape(op['summary'])}</li>"
        for path, method, op in operations
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(info['title'])}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}</style>"
        f"</head><body><h1>{escape(info['title'])} {escape(info['version'])}</h1>"
        f"<p>{escape(info['description'])} Send <code>Authorization: Bearer &lt;token&gt;</code>."
        ' The machine-readable document: <a href="/openapi.json">/openapi.json</a>.</p>'
        f"<ul>{index}</ul>"
        + "".join(_operation(path, method, op) for path, method, op in operations)
        + "</body></html>"
    )
