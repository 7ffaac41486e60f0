"""The HTML report: one self-contained page (inline CSS, a little inline JavaScript, images as
data URIs, histograms as inline SVG), with no request to anything outside the file."""

from __future__ import annotations

import base64
from html import escape as html_escape
from typing import Any

from weightkit._version import __version__
from weightkit.render._text import human_bytes, human_count, literal, num, shape_str


def escape(value: str, quote: bool = True) -> str:
    """``value`` as HTML text: markup escaped, and control and bidi characters spelled out as in the
    terminal (a browser would drop the one and reorder text around the other)."""
    return html_escape(literal(value), quote=quote)


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#b8c0cc}main{padding:8px 28px 40px;max-width:1400px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:8px;margin:16px 0;padding:12px 18px}
h2{font-size:16px;margin:4px 0 10px}table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{padding:4px 8px;border-bottom:1px solid #eceef2;text-align:left;vertical-align:top}
th{background:#f0f2f5;position:sticky;top:0}th.sort{cursor:pointer;user-select:none}
th.sort:after{content:" \\2195";color:#8a93a3}td.n{text-align:right;font-variant-numeric:tabular-nums}
.kpi{display:inline-block;margin:0 28px 8px 0}.kpi b{display:block;font-size:20px}
.error{color:#b3261e;font-weight:600}.warning{color:#9a6700;font-weight:600}.info{color:#1f6feb}
.ok{color:#1a7f37}.muted{color:#6b7280}input.filter{padding:5px 8px;width:280px;margin:0 0 8px}
figure{display:inline-block;margin:6px 12px 6px 0;vertical-align:top}figure img{max-width:560px;border:1px solid #eee}
figcaption{font-size:12px;color:#6b7280}details>summary{cursor:pointer;margin:4px 0}
svg.h{vertical-align:middle}.pager button{margin:6px 6px 0 0}
"""

JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  var body=t.tBodies[0];
  t.querySelectorAll('th.sort').forEach(function(th,i){
    th.addEventListener('click',function(){
      var asc=th.dataset.dir!=='asc';th.dataset.dir=asc?'asc':'desc';
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[i].dataset.v,y=b.cells[i].dataset.v;
        var nx=parseFloat(x),ny=parseFloat(y);
        var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y));
        return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});
      paginate(t);});});
  paginate(t);});
document.querySelectorAll('input.filter').forEach(function(inp){
  inp.addEventListener('input',function(){
    var t=document.getElementById(inp.dataset.table),q=inp.value.toLowerCase();
    Array.prototype.forEach.call(t.tBodies[0].rows,function(r){
      r.dataset.match=r.textContent.toLowerCase().indexOf(q)>=0?'1':'0';});
    t.dataset.page='0';paginate(t);});});
function paginate(t){
  var size=parseInt(t.dataset.pagesize||'0'),page=parseInt(t.dataset.page||'0'),k=0;
  Array.prototype.forEach.call(t.tBodies[0].rows,function(r){
    var m=r.dataset.match!=='0';
    r.style.display=(m&&(!size||(k>=page*size&&k<(page+1)*size)))?'':'none';if(m)k++;});
  var info=document.getElementById(t.id+'-page');
  if(info&&size){info.textContent='rows '+Math.min(k,page*size+1)+'-'+Math.min(k,(page+1)*size)+' of '+k;}
  t.dataset.rows=k;}
document.querySelectorAll('.pager button').forEach(function(b){
  b.addEventListener('click',function(){
    var t=document.getElementById(b.dataset.table),size=parseInt(t.dataset.pagesize);
    var last=Math.max(0,Math.ceil(parseInt(t.dataset.rows)/size)-1);
    var p=parseInt(t.dataset.page||'0')+parseInt(b.dataset.step);
    t.dataset.page=String(Math.min(last,Math.max(0,p)));paginate(t);});});
"""

PAGE_SIZE = 200


def _svg_hist(counts: list[int], width: int = 120, height: int = 22) -> str:
    """A sparkline histogram as one filled step path (bins are x = 0..n in the viewBox).

    One element and ~10 bytes per bin instead of a ``<rect>`` per bin: a model with thousands of
    tensors otherwise spends most of the page (and of the browser's load time) on these."""
    if not counts:
        return ""
    top = max(counts) or 1
    d, last = [f"M0 {height}"], None
    for i, c in enumerate(counts):
        y = f"{height - height * c / top:.1f}".replace(".0", "")
        if y == last:  # same height as the bin before: extend it
            d[-1] = f"V{y}H{i + 1}"
        else:
            d.append(f"V{y}H{i + 1}")
        last = y
    d.append(f"V{height}Z")
    return (f'<svg class="h" width="{width}" height="{height}" viewBox="0 0 {len(counts)} {height}" '
            f'preserveAspectRatio="none" fill="#4c72b0"><path d="{"".join(d)}"/></svg>')


def _td(value: Any, text: str | None = None, numeric: bool = False) -> str:
    shown = escape(text if text is not None else str(value))
    sort = escape(str(value if value is not None else ""), quote=True)
    return f'<td{" class=n" if numeric else ""} data-v="{sort}">{shown}</td>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>{body}</section>'


def _figures(pics) -> str:
    return "".join(f'<figure><img alt="{escape(c)}" src="{data_uri(p)}"><figcaption>{escape(c)}</figcaption></figure>'
                   for c, p in pics)


def _overview(data) -> str:
    s, tot = data.summary, data.summary.totals
    d = data.doctor
    kpis = [
        ("parameters", f"{tot.parameters:,}"),
        ("trainable", f"{tot.trainable:,}" if not tot.trainable_unknown else "not recorded"),
        ("tensors", f"{tot.tensors}"),
        ("layers", f"{tot.layers}"),
        ("size", human_bytes(tot.bytes)),
        ("doctor", f"{len(d.errors)} errors, {sum(f.severity == 'warning' for f in d.findings)} warnings"),
    ]
    html = "".join(f'<div class="kpi"><span class="muted">{k}</span><b>{escape(v)}</b></div>' for k, v in kpis)
    dtypes = ", ".join(f"{k}: {human_bytes(v)}" for k, v in tot.bytes_by_dtype.items())
    html += f'<p>format <b>{escape(s.format)}</b>; bytes by dtype: {escape(dtypes)}'
    if tot.shared_tensors:
        html += f"; {tot.shared_tensors} shared/tied tensors (counted once)"
    html += "</p>"
    if s.metadata:
        rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))[:300]}</td></tr>" for k, v in s.metadata.items())
        html += f"<details><summary>metadata ({len(s.metadata)} entries)</summary><table>{rows}</table></details>"
    return html


def _layer_table(data) -> str:
    by_layer: dict[str, list] = {}
    for t in data.stats.tensors:
        by_layer.setdefault(t.layer, []).append(t)
    summary_by_name = {t["name"]: t for t in data.summary.tensors}
    rows = []
    for g in data.stats.layers:
        tensors = by_layer.get(g.name, [])
        shapes = "; ".join(f"{t.role} {shape_str(t.shape)}" for t in tensors)
        hist = max((t for t in tensors if not t.is_buffer), key=lambda t: t.count, default=None)
        axes = summary_by_name.get(hist.name, {}).get("axes", []) if hist else []
        rows.append(
            "<tr>" + _td(g.name or "(top level)") + _td(g.kind) + _td(g.count, human_count(g.count), True)
            + _td(shapes) + _td(", ".join(axes)) + _td(g.mean, num(g.mean), True) + _td(g.std, num(g.std), True)
            + _td(g.absmax, num(g.absmax), True) + _td(g.l2_norm, num(g.l2_norm), True)
            + _td(100 * g.zeros / g.count if g.count else 0, f"{100 * g.zeros / g.count:.1f}%" if g.count else "—", True)
            + _td(g.nan + g.posinf + g.neginf, str(g.nan + g.posinf + g.neginf), True)
            + f"<td>{_svg_hist(hist.hist_counts) if hist else ''}</td></tr>"
        )
    heads = ["layer", "kind", "params", "tensors", "axes of largest", "mean", "std", "absmax", "L2 norm",
             "zeros", "NaN/Inf"]
    head = "".join(f'<th class="sort">{h}</th>' for h in heads) + "<th>histogram</th>"
    size = PAGE_SIZE if len(rows) > PAGE_SIZE else 0
    pager = ""
    if size:
        pager = ('<div class="pager"><button data-table="layers-table" data-step="-1">previous</button>'
                 '<button data-table="layers-table" data-step="1">next</button>'
                 '<span id="layers-table-page" class="muted"></span></div>')
    return (f'<input class="filter" data-table="layers-table" placeholder="filter layers…">'
            f'<table id="layers-table" class="sortable" data-pagesize="{size}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{pager}"
            f'<p class="muted">Click a column to sort. Statistics over finite values of the parameters; '
            f"histograms of each layer's largest tensor.</p>")


def _doctor(data) -> str:
    d = data.doctor
    if not d.findings:
        return f'<p class="ok">No problems found ({len(d.rules_run)} rules checked).</p>'
    rows = "".join(
        f'<tr><td class="{f.severity}">{f.severity}</td><td>{escape(f.rule)}</td><td>{escape(f.message)}'
        f'<br><span class="muted">fix: {escape(f.fix)}</span></td></tr>'
        for f in d.findings
    )
    return f"<table><thead><tr><th>severity</th><th>rule</th><th>finding</th></tr></thead><tbody>{rows}</tbody></table>"


def _tensor_stats(data) -> str:
    rows = "".join(
        "<tr>" + _td(t.name) + _td(t.dtype) + _td(shape_str(t.shape)) + _td(t.mean, num(t.mean), True)
        + _td(t.std, num(t.std), True) + _td(t.min, num(t.min), True) + _td(t.max, num(t.max), True)
        + _td(t.quantiles.get("0.5"), num(t.quantiles.get("0.5")), True)
        + f"<td>{_svg_hist(t.hist_counts)}</td></tr>"
        for t in data.stats.tensors if t.error is None
    )
    size = PAGE_SIZE if len(data.stats.tensors) > PAGE_SIZE else 0
    head = "".join(f'<th class="sort">{h}</th>' for h in ("tensor", "dtype", "shape", "mean", "std", "min", "max",
                                                          "median")) + "<th>histogram</th>"
    pager = ('<div class="pager"><button data-table="tensors-table" data-step="-1">previous</button>'
             '<button data-table="tensors-table" data-step="1">next</button>'
             '<span id="tensors-table-page" class="muted"></span></div>') if size else ""
    return (f"<details><summary>{len(data.stats.tensors)} tensors</summary>"
            f'<input class="filter" data-table="tensors-table" placeholder="filter tensors…">'
            f'<table id="tensors-table" class="sortable" data-pagesize="{size}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table>{pager}</details>")


def _diff(data) -> str:
    d = data.diff
    rows = "".join("<tr>" + _td(c.layer) + _td(c.kind) + _td(c.relative, num(c.relative), True)
                   + _td(c.norm_a, num(c.norm_a), True) + _td(c.norm_b, num(c.norm_b), True) + "</tr>"
                   for c in d.layers)
    extra = ""
    for label, names in (("only in this source", d.only_in_a), ("only in the other", d.only_in_b),
                         ("shape differs", d.shape_mismatch)):
        if names:
            extra += f"<p><b>{label}</b> ({len(names)}): {escape(', '.join(names[:30]))}</p>"
    head = "".join(f'<th class="sort">{h}</th>' for h in ("layer", "kind", "relative change", "norm", "other norm"))
    return (f"<p>compared with <b>{escape(d.b)}</b></p>{_figures(data.pictures.get('diff', []))}{extra}"
            f'<table id="diff-table" class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')


def _run(data) -> str:
    alerts = data.run.get("alerts", [])
    rows = "".join(f"<tr><td>{escape(str(a.get('step', '')))}</td><td>{escape(str(a.get('param', '')))}</td>"
                   f"<td>{escape(str(a.get('kind', '')))}</td><td>{escape(str(a.get('message', '')))}</td></tr>"
                   for a in alerts)
    table = (f"<table><thead><tr><th>step</th><th>parameter</th><th>alert</th><th>message</th></tr></thead>"
             f"<tbody>{rows}</tbody></table>") if alerts else '<p class="ok">No alerts during the run.</p>'
    return f"<p>run <b>{escape(data.run['name'])}</b></p>{_figures(data.pictures.get('gradflow', []))}{table}"


def render_html(data) -> tuple[str, list[str]]:
    """The page and the ids of the sections it holds."""
    s = data.summary
    parts = [("overview", "Overview", _overview(data)), ("layers", "Layers", _layer_table(data)),
             ("doctor", "Doctor", _doctor(data)), ("statistics", "Statistics per tensor", _tensor_stats(data))]
    if data.pictures.get("filters"):
        parts.append(("filters", "Convolution filters", _figures(data.pictures["filters"])))
    if data.pictures.get("heatmaps"):
        parts.append(("heatmaps", "Weight matrices", _figures(data.pictures["heatmaps"])))
    if data.importance is not None:
        parts.append(("importance", "Input-feature importance", _figures(data.pictures.get("importance", []))))
    if data.run is not None:
        parts.append(("run", "Training run: gradient flow and alerts", _run(data)))
    if data.diff is not None:
        parts.append(("compare", "Comparison", _diff(data)))
    if data.notes:
        parts.append(("notes", "Notes", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in data.notes) + "</ul>"))
    nav = " · ".join(f'<a href="#{sid}" style="color:#b8c0cc">{escape(title)}</a>' for sid, title, _ in parts)
    body = "".join(_section(sid, title, html) for sid, title, html in parts)

    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>weightkit report: {escape(s.source)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>weightkit report</h1><p>{escape(s.source)} · weightkit {__version__}</p><p>{nav}</p></header>"
            f"<main>{body}</main><script>{JS}</script></body></html>")
    return page, [sid for sid, _, _ in parts]


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()
