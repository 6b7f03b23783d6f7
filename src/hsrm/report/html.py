"""``results.html``: a self-contained page (inline SVG plots, inline CSS/JS, nothing fetched) beside
every ``results.json``: best-of-N curves with CIs per family, ROC curves per scorer, per-family
tables, a reliability diagram of the heads' sigmoid scores, and a token view of example answers
coloured by ELHSR's per-token gate weight and reward.

Writers: ``write_bon_html`` (``hsrm evaluate`` / ``hsrm demo``), ``write_pairs_html``
(``hsrm prefs evaluate``), ``write_detect_html`` (``hsrm detect evaluate``). The page's script
writes any JavaScript error into ``#js-errors`` and a summary of what rendered into
``#render-status``, so a headless browser's DOM dump shows both (``tests/test_report_html.py``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hsrm.io import atomic_write_bytes
from hsrm.report.bon import _scorers, bon_figure, bon_rows, series_styles, small_store_warnings
from hsrm.report.svg import _svg, calibration_svg, roc_svg

MIN_CALIBRATION = 30  # answers: fewer make a reliability diagram of 10 bins mostly empty


@dataclass
class TokenExample:
    """One answer for the token view: per-token text, ELHSR gate weight and reward."""

    title: str  # why it is shown: "best", "worst", "wrong answer the head liked", ...
    prompt: str
    tokens: list[str]
    gate: list[float]  # sigmoid(g_t) in [0, 1]
    reward: list[float]  # r_t (logit scale)
    score: float  # the head's score: sum_t gate_t r_t / sum_t gate_t
    label: int | None = None  # 1 correct, 0 wrong, None unknown


@dataclass
class ScoreData:
    """Per-sample scores the plots need beyond ``results.json``'s aggregates."""

    scores: dict[str, np.ndarray]  # scorer -> (n,) higher = better
    labels: np.ndarray  # (n,) 1 = correct / chosen
    calibrated: tuple[str, ...] = ()  # scorers whose sigmoid is a probability
    examples: list[TokenExample] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# numbers
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1360px;margin:0 auto;padding:18px 24px 48px}
h1{font-size:22px;margin:6px 0 2px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
h3{font-size:14px;margin:16px 0 6px}
.sub{color:#5b6473;margin:0 0 12px}
.card{background:#fff;border:1px solid #e1e5eb;border-radius:8px;padding:12px 14px;margin:10px 0;overflow-x:auto}
.row{display:flex;flex-wrap:wrap;gap:12px}.row>.card{flex:1 1 420px}
svg{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:12.5px;font-variant-numeric:tabular-nums}
th,td{padding:4px 9px;border-bottom:1px solid #edf0f3;text-align:right;white-space:nowrap}
th{background:#f1f3f6;cursor:pointer;user-select:none} td:first-child,th:first-child{text-align:left}
tr:hover td{background:#f8fafc}
.warn{background:#fff7e0;border:1px solid #f0d48a;border-radius:6px;padding:8px 12px;margin:8px 0}
.tokens{font:13px/2.0 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;word-break:break-word}
.tok{border-radius:3px;padding:1px 0}
.ex h3 .lab{font-weight:normal;color:#5b6473}
.ok{color:#18794e}.bad{color:#c0392b}
.prompt{color:#5b6473;font-size:12px;white-space:pre-wrap;margin:2px 0 6px}
.legend span{display:inline-block;width:38px;height:12px;vertical-align:middle;border-radius:2px}
.bon-legend{display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12.5px;margin:8px 0 0}
.bon-legend label{white-space:nowrap;cursor:pointer}.bon-legend .sw{display:inline-block;width:22px;height:3px;vertical-align:middle;margin:0 5px 0 3px}
.bon-legend .role{color:#5b6473}.bon-more{font-size:12.5px;margin:6px 0 0}.bon-more summary{cursor:pointer;color:#3465a4}
.bon-legend button{font-size:12px;margin-right:6px}
#js-errors:empty{display:none} #js-errors{color:#c0392b;white-space:pre-wrap}
"""

JS = r"""
window.onerror=function(msg,src,line,col,err){var e=document.getElementById('js-errors');
 if(e){e.textContent+='JS error: '+msg+' (line '+line+')\n';}return false;};
function tokColour(g,r,mode){
 var v=mode==='gate'?g:(mode==='reward'?Math.tanh(r/2):Math.tanh(g*r/2));
 if(mode==='gate'){return 'rgba(52,101,164,'+(0.08+0.8*v).toFixed(3)+')';}
 var a=(0.08+0.75*Math.abs(v)).toFixed(3);
 return v>=0?'rgba(46,160,67,'+a+')':'rgba(214,69,65,'+a+')';}
function bonApply(){
 document.querySelectorAll('input.bon-series').forEach(function(cb){
  document.querySelectorAll('[id^="bon-s'+cb.dataset.series+'-p"],[id^="bon-b'+cb.dataset.series+'-p"]').forEach(function(g){
   g.style.display=cb.checked?'':'none';});});
 bonStatus();}
function bonSet(which){
 document.querySelectorAll('input.bon-series').forEach(function(cb){
  cb.checked=which==='all'||(which==='default'&&cb.dataset.default==='1');});
 bonApply();}
function overlaps(a,b){return a.left<b.right&&b.left<a.right&&a.top<b.bottom&&b.top<a.bottom;}
function bonStatus(){
 var st=document.getElementById('render-status');if(!st){return;}
 var shown=[];document.querySelectorAll('input.bon-series').forEach(function(cb){
  var g=document.getElementById('bon-s'+cb.dataset.series+'-p0');
  if(g&&getComputedStyle(g).display!=='none'){shown.push(cb.dataset.name);}});
 st.dataset.series=shown.length;st.dataset.seriesNames=shown.join('|');
 var n=0;var leg=document.querySelector('.bon-legend');
 if(leg){var r=leg.getBoundingClientRect();
  document.querySelectorAll('[id^="bon-panel-"]').forEach(function(p){
   if(overlaps(r,p.getBoundingClientRect())){n++;}});}
 st.dataset.legendOverlaps=n;st.dataset.panels=document.querySelectorAll('[id^="bon-panel-"]').length;}
function colourTokens(mode){
 document.querySelectorAll('.tok').forEach(function(t){
  t.style.background=tokColour(parseFloat(t.dataset.g),parseFloat(t.dataset.r),mode);});}
function sortable(tbl){var ths=tbl.querySelectorAll('th');
 ths.forEach(function(th,i){th.addEventListener('click',function(){
  var body=tbl.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
  var asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
  rows.sort(function(a,b){var x=parseFloat(a.cells[i].textContent),y=parseFloat(b.cells[i].textContent);
   if(isNaN(x)||isNaN(y)){x=a.cells[i].textContent;y=b.cells[i].textContent;}
   return (x<y?-1:x>y?1:0)*(asc?1:-1);});
  rows.forEach(function(r){body.appendChild(r);});});});}
document.addEventListener('DOMContentLoaded',function(){
 document.querySelectorAll('table').forEach(sortable);
 document.querySelectorAll('input[name=tokmode]').forEach(function(r){
  r.addEventListener('change',function(){colourTokens(r.value);});});
 colourTokens('contribution');
 document.querySelectorAll('input.bon-series').forEach(function(cb){cb.addEventListener('change',bonApply);});
 document.querySelectorAll('button[data-bon]').forEach(function(b){
  b.addEventListener('click',function(){bonSet(b.dataset.bon);});});
 bonApply();
 var st=document.getElementById('render-status');
 st.dataset.svg=document.querySelectorAll('figure svg').length;
 st.dataset.rows=document.querySelectorAll('table tbody tr').length;
 st.dataset.tokens=document.querySelectorAll('.tok').length;
 st.textContent='rendered: '+st.dataset.svg+' plots, '+st.dataset.rows+' table rows, '+st.dataset.tokens+' tokens';
});
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_html(svg: str, caption: str = "") -> str:
    cap = f"<figcaption class='sub'>{_e(caption)}</figcaption>" if caption else ""
    return f"<figure style='margin:0'>{svg}{cap}</figure>"


def _token_colour(g: float, r: float) -> str:
    """The static colour (gate x reward), the same as the script's default mode."""
    v = math.tanh(g * r / 2)
    a = 0.08 + 0.75 * abs(v)
    return f"rgba(46,160,67,{a:.3f})" if v >= 0 else f"rgba(214,69,65,{a:.3f})"


def tokens_html(ex: TokenExample) -> str:
    spans = []
    for t, g, r in zip(ex.tokens, ex.gate, ex.reward):
        spans.append(
            f"<span class='tok' data-g='{g:.4f}' data-r='{r:.4f}' "
            f"style='background:{_token_colour(g, r)}' "
            f"title='gate {g:.3f} · reward {r:+.3f} · contribution {g * r:+.3f}'>{_e(t)}</span>"
        )
    lab = {1: "<span class='ok'>correct</span>", 0: "<span class='bad'>wrong</span>"}.get(
        ex.label if ex.label is not None else -1, "unlabelled"
    )
    return (
        f"<div class='card ex'><h3>{_e(ex.title)} <span class='lab'>· score {ex.score:+.3f} · "
        f"{lab}</span></h3><div class='prompt'>{_e(ex.prompt)}</div>"
        f"<div class='tokens'>{''.join(spans)}</div></div>"
    )


def token_view_html(examples: Sequence[TokenExample]) -> str:
    if not examples:
        return ""
    ctl = (
        "<div class='legend'>colour by: "
        "<label><input type='radio' name='tokmode' value='contribution' checked> gate × reward</label> "
        "<label><input type='radio' name='tokmode' value='reward'> reward r<sub>t</sub></label> "
        "<label><input type='radio' name='tokmode' value='gate'> gate σ(g<sub>t</sub>)</label> "
        "&nbsp; <span style='background:rgba(214,69,65,.8)'></span> lowers the score "
        "<span style='background:rgba(46,160,67,.8)'></span> raises it; hover a token for its numbers."
        "</div>"
    )
    intro = (
        "<p class='sub'>ELHSR scores an answer as Σ<sub>t</sub> σ(g<sub>t</sub>) r<sub>t</sub> / "
        "Σ<sub>t</sub> σ(g<sub>t</sub>): each token has a gate weight (how much it counts) and a "
        "reward (which way it pushes). Examples from held-out prompts.</p>"
    )
    return intro + ctl + "".join(tokens_html(e) for e in examples)


def page(
    title: str, subtitle: str, sections: Sequence[tuple[str, str]], warnings: Sequence[str]
) -> str:
    warn = "".join(f"<div class='warn'>⚠ {_e(w)}</div>" for w in warnings)
    body = "".join(f"<section><h2>{_e(h)}</h2>{b}</section>" for h, b in sections if b)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{CSS}</style><script>{JS}</script></head><body><main>"
        f"<h1>{_e(title)}</h1><p class='sub'>{_e(subtitle)}</p>"
        "<div id='js-errors'></div><div id='render-status' class='sub'></div>"
        f"{warn}{body}</main></body></html>"
    )


def _write(path: str | Path, text: str) -> Path:
    path = Path(path)
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def _calibration_section(data: ScoreData) -> tuple[str, list[str]]:
    cal = {k: v for k, v in data.scores.items() if k in data.calibrated}
    if not cal:
        return "", []
    if len(data.labels) < MIN_CALIBRATION:
        return "", [
            f"only {len(data.labels)} answers (< {MIN_CALIBRATION}): no reliability diagram"
        ]
    svg, notes = calibration_svg(cal, data.labels)
    return (
        "<div class='card'>"
        + figure_html(
            svg,
            "Equal-width bins of sigmoid(score) against the fraction of correct answers in each; "
            "ECE = count-weighted mean gap. " + "; ".join(notes),
        )
        + "</div>"
    ), []


def bon_legend_html(rep: dict[str, Any]) -> str:
    """results.html's legend of the best-of-N figure, below it: one checkbox per series (the
    defaults ticked: ``hsrm.report.bon.default_series`` and the oracle), the others folded in a
    ``<details>``, and buttons for all / the defaults."""

    def item(i: int, st: dict[str, Any]) -> str:
        role = f" <span class='role'>· {_e(st['role'])}</span>" if st["role"] else ""
        dash = "border-top:2px dashed" if st["name"] == "oracle" else "border-top:3px solid"
        return (
            f"<label title='{_e(st['name'])}'><input type='checkbox' class='bon-series' "
            f"data-series='{i}' data-name='{_e(st['name'])}' data-default='{int(st['default'])}'"
            f"{' checked' if st['default'] else ''}><span class='sw' style='{dash} "
            f"{st['colour']}'></span>{_e(st['label'])}{role}</label>"
        )

    series = series_styles(rep)
    first = "".join(item(i, st) for i, st in enumerate(series) if st["default"])
    rest = "".join(item(i, st) for i, st in enumerate(series) if not st["default"])
    more = (
        f"<details class='bon-more'><summary>{sum(not s['default'] for s in series)} more "
        f"scorers</summary><div class='bon-legend'>{rest}</div></details>"
        if rest
        else ""
    )
    buttons = (
        "<div class='bon-legend'><button type='button' id='bon-all' data-bon='all'>show all"
        "</button><button type='button' id='bon-default' data-bon='default'>defaults</button></div>"
    )
    return f"<div class='bon-legend'>{first}</div>{more}{buttons if rest else ''}"


def _row(*cards: str) -> str:
    inner = "".join(c for c in cards if c)
    return f"<div class='row'>{inner}</div>" if inner else ""


def _roc_section(data: ScoreData, title: str, caption: str) -> tuple[str, list[str]]:
    y = np.asarray(data.labels, int)
    if len(np.unique(y)) < 2:
        return "", ["all answers have the same label: no ROC curve"]
    return "<div class='card'>" + figure_html(
        roc_svg(data.scores, y, title), caption
    ) + "</div>", []


# ----------------------------------------------------------------------------------------------
# writers
def write_bon_html(
    path: str | Path, rep: dict[str, Any], data: ScoreData | None = None, title: str = ""
) -> Path:
    """The best-of-N page for ``hsrm evaluate`` / ``hsrm demo`` (``rep`` from ``bon_report``)."""
    warnings = small_store_warnings(rep)
    sections: list[tuple[str, str]] = []
    if len(rep.get("pass_at_k", {})) >= 1:
        sections.append(
            (
                "Best-of-N",
                "<div class='card'>"
                + figure_html(_svg(bon_figure(rep, html=True)))
                + bon_legend_html(rep)
                + "<p class='sub'>Accuracy of the answer each scorer picks among N samples of a "
                "prompt; the oracle picks a correct one whenever there is one (pass@N). Drawn: "
                "the pick, majority vote and the best other training-free selector; tick a "
                "scorer to add it.</p>" + "</div>",
            )
        )
    tables = [
        "<div class='card'><h3>all prompts</h3>" + table_html(*bon_rows(rep)) + "</div>",
    ]
    for fam, sub in rep.get("per_family", {}).items():
        tables.append(
            f"<div class='card'><h3>family {_e(fam)}: {sub['n_prompts']} prompts, mean accuracy "
            f"{sub['mean_accuracy']:.3f}</h3>" + table_html(*bon_rows(sub)) + "</div>"
        )
    sections.append(("Tables (per family)", "".join(tables)))
    if data is not None:
        order = [n for n in _scorers(rep) if n in data.scores] + [
            n for n in data.scores if n not in rep.get("bon", {})
        ]
        d = ScoreData({n: data.scores[n] for n in order}, data.labels, data.calibrated)
        roc, w1 = _roc_section(
            d,
            "ROC: correct vs wrong answers, pooled over prompts",
            "Pooled AUROC ranks answers across prompts; best-of-N needs the within-prompt ranking "
            "(the tables' within-prompt AUROC). Constant scorers are the diagonal.",
        )
        cal, w2 = _calibration_section(d)
        warnings += w1 + w2
        sections.append(("ROC curves and calibration", _row(roc, cal)))
        sections.append(("Token view", token_view_html(data.examples)))
    extra = rep.get("sizes")
    sub = (
        f"{rep['n_prompts']} held-out prompts, {rep['n_samples']} samples, "
        f"mean accuracy {rep['mean_accuracy']:.3f}"
        + (f"; model {rep['model']['name']}" if isinstance(rep.get("model"), dict) else "")
        + (f" ({rep['dtype']})" if isinstance(rep.get("model"), dict) and rep.get("dtype") else "")
        + (f"; {extra['folds']}-fold cross-fit by prompt" if isinstance(extra, dict) else "")
        + (
            f", each fold also trained on {extra['train_only_prompts']} training-only prompts"
            if isinstance(extra, dict) and extra.get("train_only_prompts")
            else ""
        )
    )
    return _write(path, page(title or "hsrm: best-of-N report", sub, sections, warnings))


def write_pairs_html(
    path: str | Path,
    res: dict[str, dict[str, Any]],
    data: ScoreData | None = None,
    title: str = "hsrm: preference pairs",
) -> Path:
    """The page for ``hsrm prefs evaluate``: pairwise accuracy per scorer, ROC of chosen vs rejected
    answers (per-answer scores), token view where the head is ELHSR."""
    rows = [
        [k, f"{r['acc']:.3f}", f"[{r['lo']:.3f}, {r['hi']:.3f}]", r["n_pairs"], r["n_questions"]]
        for k, r in res.items()
    ]
    sections = [
        (
            "Pairwise accuracy",
            "<div class='card'>"
            + table_html(["scorer", "pairwise accuracy", "95% CI", "pairs", "questions"], rows)
            + "<p class='sub'>Ties count half; the CI resamples whole questions.</p></div>",
        )
    ]
    warnings: list[str] = []
    n_pairs = min((int(r["n_pairs"]) for r in res.values()), default=0)
    if n_pairs < MIN_CALIBRATION:
        warnings.append(f"only {n_pairs} pairs: accuracies are coarse")
    if data is not None:
        roc, w = _roc_section(
            data,
            "ROC: chosen vs rejected answers",
            "Each answer labelled by its role (chosen 1, rejected 0), scored on its own.",
        )
        warnings += w
        sections += [("ROC curves", roc), ("Token view", token_view_html(data.examples))]
    sub = ", ".join(f"{k}: {r['acc']:.3f}" for k, r in res.items())
    return _write(path, page(title, sub, sections, warnings))


def write_detect_html(
    path: str | Path,
    rows: list[dict[str, Any]],
    data: ScoreData | None = None,
    title: str = "hsrm: hallucination detection",
) -> Path:
    """The page for ``hsrm detect evaluate``: AUROC table with CIs, ROC per method (positive =
    hallucination, i.e. a wrong answer), reliability of the heads' sigmoid scores."""
    table = table_html(
        ["method", "AUROC", "95% CI", "answers", "questions", "hallucination rate"],
        [
            [
                r["method"],
                f"{r['auroc']:.3f}",
                f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
                r["n_answers"],
                r["n_questions"],
                f"{r['hallucination_rate']:.3f}",
            ]
            for r in rows
        ],
    )
    sections = [("AUROC of detecting hallucinations", f"<div class='card'>{table}</div>")]
    warnings: list[str] = []
    if rows and rows[0]["n_questions"] < 20:
        warnings.append(f"only {rows[0]['n_questions']} questions: the CIs are wide")
    if data is not None:
        roc, w1 = _roc_section(
            ScoreData(data.scores, 1 - np.asarray(data.labels, int)),
            "ROC: detecting wrong answers",
            "Positive = a wrong (hallucinated) answer; scores are each method's hallucination score.",
        )
        cal_scores = {k: -v for k, v in data.scores.items() if k in data.calibrated}
        cal, w2 = _calibration_section(ScoreData(cal_scores, data.labels, tuple(cal_scores)))
        warnings += w1 + w2
        sections += [
            ("ROC curves and calibration", _row(roc, cal)),
            ("Token view", token_view_html(data.examples)),
        ]
    n = rows[0]["n_answers"] if rows else 0
    return _write(path, page(title, f"{n} answers", sections, warnings))


# ----------------------------------------------------------------------------------------------
# token examples
def pick_examples(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None
) -> list[tuple[str, int]]:
    """Indices to show: the best- and worst-scored answers, the wrong answer the head liked most and
    the right answer it liked least (from prompts with both, where there are such prompts)."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    pool = np.arange(len(s))
    if groups is not None:
        g = np.asarray(groups)
        mixed = {k for k in set(g.tolist()) if 0 < y[g == k].mean() < 1}
        if mixed:
            pool = np.flatnonzero([k in mixed for k in g.tolist()])
    out: list[tuple[str, int]] = []
    if len(pool) == 0:
        return out
    out.append(("best-scored answer", int(pool[np.argmax(s[pool])])))
    out.append(("worst-scored answer", int(pool[np.argmin(s[pool])])))
    wrong, right = pool[y[pool] == 0], pool[y[pool] == 1]
    if len(wrong):
        out.append(("a wrong answer the head liked", int(wrong[np.argmax(s[wrong])])))
    if len(right):
        out.append(("a right answer the head disliked", int(right[np.argmin(s[right])])))
    seen: set[int] = set()
    uniq = []
    for t, i in out:  # one answer can be both the best and the wrong one the head liked
        if i not in seen:
            seen.add(i)
            uniq.append((t, i))
    return uniq


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """One display string per token (``[id]`` where there is no tokenizer)."""
    if tokenizer is None:
        return [f"[{int(t)}]" for t in ids]
    return [tokenizer.decode([int(t)]) for t in ids]


def pairs_score_data(
    ps: Any, scores: dict[str, np.ndarray], head: Any = None, tokenizer: Any = None
) -> ScoreData:
    """``ScoreData`` of a ``PairSet``'s answers (chosen 1, rejected 0; answers that are both are
    left out) and, for an ELHSR ``head``, token-view examples (answers re-tokenised alone: an answer
    whose re-tokenisation does not match its states' length is skipped)."""
    role: dict[int, set[int]] = {}
    for c, r in zip(ps.chosen, ps.rejected):
        role.setdefault(int(c), set()).add(1)
        role.setdefault(int(r), set()).add(0)
    keep = np.array(sorted(a for a, v in role.items() if len(v) == 1), dtype=int)
    y = np.array([next(iter(role[int(a)])) for a in keep], dtype=int)
    data = ScoreData({k: np.asarray(v, float)[keep] for k, v in scores.items()}, y)
    if head is None or not hasattr(head, "token_contributions") or tokenizer is None:
        return data
    key = next(iter(scores))
    for title, j in pick_examples(data.scores[key], y, ps.answer_groups[keep]):
        a = int(keep[j])
        ids = tokenizer(ps.texts[a], add_special_tokens=False)["input_ids"]
        ((g, r),) = head.token_contributions(ps.feats.subset([a]))
        if len(ids) != len(g):
            continue
        data.examples.append(
            TokenExample(
                title.replace("wrong", "rejected").replace("right", "chosen"),
                ps.prompts[a],
                token_strings(tokenizer, ids),
                [float(v) for v in g],
                [float(v) for v in r],
                float(data.scores[key][j]),
                int(y[j]),
            )
        )
    return data
