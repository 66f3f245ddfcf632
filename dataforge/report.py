"""``<out>/report.html``: one self-contained page per build — the run and its steps (rows in and
out, seconds, reuse, drops by reason), every exported dataset's card with its plots, and ten
example rows per split, each with its ``dataforge why`` history one click away.

Consumes the lineage of the newest build, the exported datasets and their cards; produces one
HTML file with inline CSS and images (data URIs): no script, no font, no request to the network.
Written under a temporary name and renamed into place."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

from dataforge.lineage import iter_dataset_tables, open_read
from dataforge.why import RowHistory, describe_event, row_histories

REPORT_NAME = "report.html"
EXAMPLES = 10  # rows shown per split
CELL_CHARS = 1200  # longer cells are cut, with the full length named

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#c9d1e0}nav{padding:10px 28px;background:#e8ebf1}nav a{margin-right:16px}
main{padding:0 28px 40px}section{background:#fff;border:1px solid #dde1e8;border-radius:6px;
margin:18px 0;padding:6px 20px 16px}h2{border-bottom:1px solid #dde1e8;padding-bottom:6px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #dde1e8;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#f0f2f6}img{max-width:100%;
display:block;margin:8px 0}code{background:#f0f2f6;padding:0 3px;border-radius:3px}
pre{background:#f6f7f9;padding:8px;overflow:auto;max-height:320px;white-space:pre-wrap;margin:0}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}.card{border-left:3px solid #4c72b0;
padding-left:14px}.example{border:1px solid #dde1e8;border-radius:4px;margin:10px 0;padding:6px 10px}
.history ol{margin:4px 0 4px 18px;padding:0}.fate{font-weight:600}.muted{color:#6b7385}
.dropped{color:#b03a3a}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _markdown(text: str) -> str:
    """Markdown → HTML (CommonMark with tables); raw HTML in the text is escaped, not rendered."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _inline_images(body: str, folder: Path) -> str:
    """Each ``<img src="NAME.png">`` of a card → a data URI of ``folder/NAME.png``."""

    def data_uri(m: re.Match[str]) -> str:
        path = folder / html.unescape(m.group(1))
        if not path.is_file() or path.parent != folder:
            return m.group(0)  # left as it is: the browser test names a missing image
        return 'src="data:image/png;base64,' + base64.b64encode(path.read_bytes()).decode() + '"'

    return re.sub(r'src="([^"/]+\.png)"', data_uri, body)


def _card(folder: Path) -> str:
    """A dataset's card as HTML: the Hub's YAML front matter folded away, the body rendered. A
    dataset folder removed since the build is named as missing, not a crash."""
    if not (folder / "card.md").is_file():
        return f"<p class='dropped'>No card at {_e(folder / 'card.md')}: the dataset was removed after the build.</p>"
    text = (folder / "card.md").read_text()
    front = ""
    if text.startswith("---\n"):
        _, yaml_text, text = text.split("---\n", 2)
        front = f"<details><summary>Hub metadata (YAML front matter)</summary><pre>{_e(yaml_text)}</pre></details>"
    body = re.sub(r"<(/?)h([1-6])>", lambda m: f"<{m.group(1)}h{min(int(m.group(2)) + 2, 6)}>", _markdown(text))
    return front + _inline_images(body, folder)  # its headings under the report's (h1 page, h2 dataset)


def _cell(value: Any) -> str:
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        text = "\n\n".join(f"{m.get('role', '?')}: {m.get('content')}" for m in value)
    elif isinstance(value, dict | list):
        text = json.dumps(value, ensure_ascii=False, indent=1)
    else:
        text = "" if value is None else str(value)
    if len(text) > CELL_CHARS:
        text = text[:CELL_CHARS] + f"… ({len(text):,} characters)"
    return f"<pre>{_e(text)}</pre>"


def _history(h: RowHistory | None, row_id: str) -> str:
    """A row's ``dataforge why`` as a folded list: each step that held or decided about it."""
    if h is None:
        return (
            f'<details class="history"><summary>history of <code>{_e(row_id)}</code></summary>'
            "<p>No artifact or event of the newest build names this row.</p></details>"
        )
    items = []
    for s in h.steps:
        if not s["outputs"] and not s["events"]:
            continue
        held = f"in {', '.join(s['outputs'])}" if s["outputs"] else "not in its output"
        reused = " (reused)" if s["cache_hit"] else ""
        decisions = "".join(
            f'<li class="{"dropped" if e["action"] == "dropped" else ""}">{_e(describe_event(e))}</li>'
            for e in s["events"]
        )
        items.append(
            f"<li><b>{_e(s['step'])}</b> <span class='muted'>({_e(s['kind'])}){reused}</span>: {_e(held)}"
            + (f"<ul>{decisions}</ul>" if decisions else "")
            + "</li>"
        )
    edges = "".join(
        f"<li>{_e(e['step'])}: <code>{_e(e['child_id'])}</code> ← <code>{_e(e['parent_id'])}</code> "
        f"[{_e(e['relation'])}]</li>"
        for e in h.edges
    )
    return (
        f'<details class="history"><summary>history of <code>{_e(h.row_id)}</code></summary>'
        f"<p>source: {_e(h.source or 'derived from other rows (see the edges)')}</p><ol>{''.join(items)}</ol>"
        + (f"<p>edges:</p><ul>{edges}</ul>" if edges else "")
        + f'<p class="fate">fate: {_e(h.fate)}</p></details>'
    )


def _run_section(con: Any) -> tuple[str, dict[str, Any]]:
    run = con.execute(
        "SELECT run_id, started_at, finished_at, status, recipe_path, recipe_sha256, dataforge_version FROM latest_run"
    ).fetchone()
    keys = ["run_id", "started_at", "finished_at", "status", "recipe_path", "recipe_sha256", "dataforge_version"]
    info = dict(zip(keys, run, strict=True))
    drops: dict[str, list[str]] = {}
    for step, reason, n in con.execute(
        "SELECT step, reason, count(*) FROM latest_events WHERE action = 'dropped' GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        drops.setdefault(step, []).append(f"{reason}: {n:,}")
    outputs: dict[str, list[str]] = {}
    for step, output, n in con.execute(
        "SELECT step, output, rows FROM latest_artifacts WHERE step NOT LIKE 'export:%' ORDER BY step, output"
    ).fetchall():
        outputs.setdefault(step, []).append(f"{output} {n or 0:,}")
    rows = "".join(
        f"<tr><td>{_e(step)}</td><td>{_e(kind)}</td><td>{rows_in or 0:,}</td>"
        f"<td>{_e(' · '.join(outputs.get(step, [])) or f'{rows_out or 0:,}')}</td>"
        f"<td>{_e('; '.join(drops.get(step, [])) or '-')}</td><td>{seconds or 0:.2f}</td>"
        f"<td>{'yes' if cache_hit else 'no'}</td></tr>"
        for step, kind, rows_in, rows_out, seconds, cache_hit in con.execute(
            "SELECT step, kind, rows_in, rows_out, seconds, cache_hit FROM latest_steps ORDER BY position"
        ).fetchall()
    )
    body = (
        '<section id="run"><h2>Run</h2>'
        f"<p>Recipe <code>{_e(info['recipe_path'])}</code> (sha256 <code>{_e(info['recipe_sha256'])}</code>), "
        f"build <code>{_e(info['run_id'])}</code>, {_e(info['status'])}, started {_e(info['started_at'])} UTC, "
        f"finished {_e(info['finished_at'])} UTC, dataforge {_e(info['dataforge_version'])}.</p>"
        "<table><tr><th>step</th><th>kind</th><th>rows in</th><th>rows out, by output</th><th>dropped</th>"
        f"<th>seconds</th><th>reused</th></tr>{rows}</table></section>"
    )
    return body, info


def render_report(out: Path) -> str:
    """The report of the newest build in ``out`` as one HTML document."""
    con = open_read(out)
    try:
        run_html, info = _run_section(con)
        exported = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT substr(step, 8) FROM latest_artifacts WHERE step LIKE 'export:%' ORDER BY 1"
            ).fetchall()
        ]
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for name, split, table in iter_dataset_tables(out):
            if name in exported:
                samples.setdefault(name, {})[split] = table.slice(0, EXAMPLES).to_pylist()
        ids = [r["_id"] for splits in samples.values() for rows in splits.values() for r in rows if "_id" in r]
        histories = row_histories(out, ids, con) if ids else {}
    finally:
        con.close()
    sections = []
    for name in exported:
        examples = []
        for split, rows in samples.get(name, {}).items():
            shown = []
            for r in rows:
                cells = "".join(f"<tr><th>{_e(k)}</th><td>{_cell(v)}</td></tr>" for k, v in r.items() if k != "_id")
                rid = str(r.get("_id"))
                shown.append(
                    f'<div class="example"><p><code>{_e(rid)}</code></p><table>{cells}</table>'
                    f"{_history(histories.get(rid), rid)}</div>"
                )
            examples.append(f"<h3>Examples: {_e(split)} (first {len(rows)} rows)</h3>" + "".join(shown))
        sections.append(
            f'<section id="dataset-{_e(name)}"><h2>Dataset {_e(name)}</h2>'
            f'<div class="card">{_card(out / "datasets" / name)}</div>{"".join(examples)}</section>'
        )
    nav = '<a href="#run">run</a>' + "".join(f'<a href="#dataset-{_e(n)}">{_e(n)}</a>' for n in exported)
    recipe = Path(str(info["recipe_path"])).name
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dataforge report: {_e(recipe)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>dataforge build report: {_e(recipe)}</h1>"
        f"<p>build {_e(info['run_id'])} · {len(exported)} dataset(s)</p></header>"
        f"<nav>{nav}</nav><main>{run_html}{''.join(sections)}</main></body></html>\n"
    )


def write_report(out: str | Path) -> Path:
    """Write ``<out>/report.html`` for the newest build (atomically); returns its path."""
    out = Path(out)
    target = out / REPORT_NAME
    tmp = out / f".tmp-{REPORT_NAME}"
    tmp.write_text(render_report(out), encoding="utf-8")
    tmp.replace(target)
    return target
