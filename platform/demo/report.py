"""The demo's report: report.json as built by the caller, and one self-contained HTML page.

The HTML page carries everything inline (CSS, plots as base64 PNG) so it can be mailed or opened
offline. Every string that comes from the report is escaped: study ids, hospital names and error
texts travel from other processes and are not trusted markup.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from demo.progress import as_float, as_int, as_list, as_mapping, format_bytes

MISSING = "–"
METRICS = (("roc_auc", "ROC AUC"), ("accuracy", "Accuracy"), ("loss", "Loss"))
# Colour-blind-safe (Okabe-Ito); hospitals keep their colour across plots.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1000px; margin: 0 auto; padding: 32px 24px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 40px 0 8px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
p.note, .meta, footer { color: var(--muted); font-size: 13px; }
.meta span { margin-right: 18px; white-space: nowrap; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  background: var(--soft); padding: 1px 4px; border-radius: 4px; word-break: break-all; }
.badge { display: inline-block; padding: 1px 10px; border-radius: 999px; font-size: 12.5px;
  font-weight: 600; vertical-align: middle; }
.badge.ok { background: #dafbe1; color: #116329; }
.badge.bad { background: #ffebe9; color: #a40e26; }
.alert { margin: 20px 0; padding: 14px 18px; border-radius: 8px; background: #ffebe9;
  border: 1px solid #ff8182; color: #82071e; }
.alert strong { display: block; font-size: 17px; margin-bottom: 2px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
th { background: var(--soft); font-weight: 600; font-size: 13px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.highlight td { background: #ddf4ff; font-weight: 600; }
td .sub { display: block; color: var(--muted); font-size: 12.5px; font-weight: normal; }
.dim { color: var(--muted); }
figure { margin: 12px 0; }
figure img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.box { border: 1px solid var(--line); border-radius: 8px; padding: 6px 18px; background: #fbfcfd; }
.box dl { display: grid; grid-template-columns: max-content 1fr; gap: 6px 18px; margin: 12px 0; }
.box dt { color: var(--muted); }
.box dd { margin: 0; }
.ok { color: #116329; }
.bad { color: #a40e26; }
details pre { background: var(--soft); padding: 12px; border-radius: 6px; overflow-x: auto;
  font-size: 12.5px; }
footer { margin-top: 48px; }
"""


def write_report(report: Mapping[str, Any], *, out_dir: Path) -> tuple[Path, Path]:
    """Write `out_dir`/report.json (exactly `report`) and `out_dir`/report.html; return both."""
    # Both are rendered before either is written, so a report with NaN leaves no half-written pair.
    document = json.dumps(report, indent=2, allow_nan=False, sort_keys=True, ensure_ascii=False)
    page = render_html(report)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    html_path = out_dir / "report.html"
    json_path.write_text(document + "\n", encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return json_path, html_path


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS, plots as base64 PNG images)."""
    study = as_mapping(report.get("study"))
    run = as_mapping(report.get("run"))
    rounds = [as_mapping(r) for r in as_list(report.get("rounds"))]
    privacy = as_mapping(report.get("privacy"))
    hospitals = _hospitals(study, rounds, privacy)
    study_id = str(study.get("study_id") or "study")
    sections = [
        _header(study_id, study, run),
        _failure(run),
        _results(report.get("final")),
        _metrics_section(rounds),
        _privacy_section(rounds, privacy, hospitals),
        _rounds_section(rounds, hospitals),
        _aggregator_section(
            as_mapping(report.get("aggregator")), as_mapping(report.get("encryption"))
        ),
        _protocol_section(study.get("protocol")),
        _footer(report.get("generated_at")),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Cohort report · {_e(study_id)}</title>\n"
        f"<style>{CSS}</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _header(study_id: str, study: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    status = str(run.get("status") or "unknown")
    badge = "ok" if status == "completed" else "bad"
    sha = str(study.get("protocol_sha256") or "")
    meta = [
        f'protocol <code title="{_e(sha)}">{_e(sha[:12])}…</code>' if sha else "",
        f"run <code>{_e(run.get('run_id', MISSING))}</code>",
        f"wall time {_e(_duration(as_float(run.get('wall_seconds'))))}",
        f"{len(as_list(study.get('hospitals')))} hospitals",
    ]
    spans = "".join(f"<span>{m}</span>" for m in meta if m)
    return (
        f'<header>\n<h1>{_e(study_id)} <span class="badge {badge}">{_e(status)}</span></h1>\n'
        '<div class="meta">Federated study · DP-SGD updates summed under homomorphic encryption'
        f'</div>\n<div class="meta">{spans}</div>\n</header>'
    )


def _failure(run: Mapping[str, Any]) -> str:
    if run.get("status") == "completed":
        return ""
    reason = str(run.get("reason") or "no reason was reported")
    return (
        '<div class="alert" role="alert"><strong>The run did not complete</strong>'
        f"{_e(reason)}<br><span>No final model was released, so there is no comparison on the "
        "common test set.</span></div>"
    )


def _results(final_value: object) -> str:
    if not isinstance(final_value, Mapping):
        return ""
    final = final_value
    rows = [
        _result_row("Federated, DP + HE", "this study", final.get("federated"), highlight=True),
        _result_row("Centralized", "pooled data, no privacy", final.get("centralized")),
    ]
    for name, metrics in as_mapping(final.get("local_only")).items():
        rows.append(_result_row(f"{name} alone", "its own data only, DP", metrics))
    test_rows = as_int(final.get("test_rows"))
    note = f"{test_rows} patients no hospital trained on" if test_rows is not None else ""
    return (
        "<section>\n<h2>Results on the common test set</h2>\n"
        + (f'<p class="note">{_e(note)}; higher AUC and accuracy, lower loss are better.</p>\n')
        + _table(["Model", *(label for _, label in METRICS)], rows, numeric_from=1)
        + "\n</section>"
    )


def _result_row(
    label: str, detail: str, metrics_value: object, *, highlight: bool = False
) -> tuple[list[str], bool]:
    metrics = as_mapping(metrics_value)
    cells = [f'{_e(label)}<span class="sub">{_e(detail)}</span>']
    cells += [_e(_metric(key, metrics.get(key))) for key, _ in METRICS]
    return cells, highlight


def _metrics_section(rounds: Sequence[Mapping[str, Any]]) -> str:
    if not rounds:
        return (
            '<section>\n<h2>Metrics by round</h2>\n<p class="note">No round completed.</p>\n'
            "</section>"
        )
    return (
        "<section>\n<h2>Metrics by round</h2>\n"
        + _figure(
            metrics_plot(rounds),
            "Metrics by round",
            "Weighted over the hospitals taking part in each round, on their validation data.",
        )
        + "\n</section>"
    )


def _privacy_section(
    rounds: Sequence[Mapping[str, Any]], privacy: Mapping[str, Any], hospitals: Sequence[str]
) -> str:
    parts = ["<section>\n<h2>Privacy</h2>"]
    if rounds:
        parts.append(
            _figure(
                epsilon_plot(rounds, hospitals, _targets(privacy)),
                "Privacy spent (ε) by round, per hospital",
                "Cumulative ε per hospital; a gap means the hospital sat the round out. "
                "The dashed line is the target ε.",
            )
        )
    rows = []
    for name in hospitals:
        if name not in privacy:
            continue
        p = as_mapping(privacy[name])
        epsilon, target = as_float(p.get("epsilon")), as_float(p.get("target_epsilon"))
        within = epsilon is not None and target is not None and epsilon <= target + 1e-9
        eps_cell = _e(_fixed(epsilon, 2))
        if epsilon is not None and target is not None:
            eps_cell = f'<span class="{"ok" if within else "bad"}">{eps_cell}</span>'
        consent = str(p.get("consent") or MISSING)
        cells = [
            _e(name),
            _e(consent if consent.startswith("waived") else f"{consent[:12]}…"),
            _e(f"{p.get('accountant', MISSING)} ({p.get('conversion', MISSING)})"),
            _e(_scientific(as_float(p.get("delta")))),
            _e(_fixed(as_float(p.get("projected_epsilon")), 2)),
            eps_cell,
            _e(_fixed(target, 2)),
            _e(_fixed(as_float(p.get("noise_multiplier")), 3)),
            _e(_fixed(as_float(p.get("sample_rate")), 4)),
            _e(_count(p.get("steps"))),
        ]
        rows.append((cells, False))
    if rows:
        headers = [
            "Hospital",
            "Consent snapshot",
            "Accountant (conversion)",
            "δ",
            "ε projected",
            "ε spent",
            "Target ε",
            "σ (noise)",
            "q (sample rate)",
            "Steps",
        ]
        parts.append(_table(headers, rows, numeric_from=3))
        parts.append(
            '<p class="note">From each hospital\'s own privacy ledger: ε is recomputed by the '
            "accountant from the noise multiplier σ, sample rate q and steps it recorded. "
            "“ε projected” is what the portal's preflight computed before the start from the "
            "protocol and the node's consented rows. The consent snapshot is the hash of the "
            "consent list the node trained its last round under.</p>"
        )
    else:
        parts.append('<p class="note">No hospital recorded privacy spending.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _rounds_section(rounds: Sequence[Mapping[str, Any]], hospitals: Sequence[str]) -> str:
    if not rounds:
        return ""
    rows = []
    for r in rounds:
        dropped = as_mapping(r.get("dropped"))
        dropped_cell = (
            "<br>".join(
                f'{_e(name)} <span class="dim">— {_e(why)}</span>' for name, why in dropped.items()
            )
            or '<span class="dim">none</span>'
        )
        up = as_mapping(r.get("bytes_up"))
        order = [h for h in hospitals if h in up] + [h for h in up if h not in hospitals]
        up_cell = (
            "<br>".join(f'{_e(h)} <span class="dim">{_e(_bytes(up[h]))}</span>' for h in order)
            or MISSING
        )
        participants = [str(p) for p in as_list(r.get("participants"))]
        cells = [
            _e(r.get("round", MISSING)),
            _e(", ".join(participants) or MISSING),
            dropped_cell,
            up_cell,
            _e(_bytes(r.get("bytes_down"))),
            _e(_fixed(as_float(r.get("seconds")), 1)),
        ]
        rows.append((cells, False))
    headers = ["Round", "Participants", "Dropped", "Bytes up", "Bytes down", "Seconds"]
    return (
        "<section>\n<h2>Rounds</h2>\n"
        + _table(headers, rows, numeric_from=4, numeric=(0,))
        + '\n<p class="note">Bytes up: each hospital\'s encrypted update. Bytes down: the '
        "global model sent back to each hospital.</p>\n</section>"
    )


def _aggregator_section(aggregator: Mapping[str, Any], encryption: Mapping[str, Any]) -> str:
    facts: list[tuple[str, str]] = []
    has_key = aggregator.get("has_secret_key")
    if has_key is False:
        facts.append(
            ("Secret key", '<span class="ok">✓ not held: the context is public only</span>')
        )
    elif has_key is True:
        facts.append(("Secret key", '<span class="bad">✗ held by the aggregator</span>'))
    else:
        facts.append(("Secret key", '<span class="dim">not reported</span>'))
    attempt = aggregator.get("decrypt_attempt")
    if attempt is not None:
        css = "ok" if str(attempt).startswith("refused") else "bad"
        facts.append(("Decryption attempt", f'<span class="{css}">{_e(attempt)}</span>'))
    size = aggregator.get("he_context_bytes")
    if size is not None:
        facts.append(("HE context size", _e(_bytes(size))))
    fingerprint = aggregator.get("he_context_fingerprint")
    if fingerprint:
        facts.append(("Context fingerprint", f"<code>{_e(fingerprint)}</code>"))
    overhead: list[tuple[str, str]] = []
    parameters = as_int(encryption.get("parameters"))
    if parameters is not None:
        overhead.append(("Model parameters", _e(f"{parameters:,}")))
    update, plain = encryption.get("update_bytes"), encryption.get("float32_bytes")
    if update is not None or plain is not None:
        overhead.append(
            ("Update size", f"{_e(_bytes(update))} encrypted vs {_e(_bytes(plain))} as float32")
        )
    expansion = as_float(encryption.get("expansion"))
    if expansion is not None:
        overhead.append(("Expansion", _e(f"×{expansion:,.1f}")))
    params = as_mapping(encryption.get("params"))
    if params:
        overhead.append(
            (
                "CKKS parameters",
                "<br>".join(f"{_e(k)} = <code>{_e(_plain(v))}</code>" for k, v in params.items()),
            )
        )
    parts = [
        "<section>\n<h2>Aggregator</h2>",
        '<div class="box">',
        '<p class="note">Checked by the demo: the aggregator summed the encrypted updates with a '
        "context that holds no secret key; only the hospitals can decrypt the sum.</p>",
        _definitions(facts),
    ]
    if overhead:
        parts += ["<h3>Encryption overhead</h3>", _definitions(overhead)]
    parts += ["</div>", "</section>"]
    return "\n".join(parts)


def _protocol_section(protocol: object) -> str:
    if not isinstance(protocol, Mapping) or not protocol:
        return ""
    text = json.dumps(protocol, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    return (
        "<section>\n<h2>Protocol</h2>\n<details><summary>The protocol every hospital agreed to"
        f"</summary>\n<pre>{_e(text)}</pre>\n</details>\n</section>"
    )


def _footer(generated_at: object) -> str:
    when = f"Generated {_e(generated_at)} · " if generated_at else ""
    return f"<footer>{when}Cohort · report.json holds the same data.</footer>"


def metrics_plot(rounds: Sequence[Mapping[str, Any]]) -> bytes:
    """PNG: AUC and accuracy by round on the left, loss on the right."""
    x = [_round_number(r, i) for i, r in enumerate(rounds)]
    series = {
        key: _series(as_mapping(r.get("metrics")).get(key) for r in rounds) for key, _ in METRICS
    }
    figure = Figure(figsize=(9.6, 3.4), layout="constrained")
    left, right = figure.subplots(1, 2, width_ratios=(1.6, 1))
    left.plot(x, series["roc_auc"], marker="o", color=PALETTE[0], label="ROC AUC")
    left.plot(x, series["accuracy"], marker="s", color=PALETTE[1], label="Accuracy")
    left.set_title("ROC AUC and accuracy", fontsize=11)
    left.set_ylabel("score")
    _limit_scores(left, [*series["roc_auc"], *series["accuracy"]])
    left.legend(loc="lower right", frameon=False)
    right.plot(x, series["loss"], marker="o", color=PALETTE[5])
    right.set_title("Loss", fontsize=11)
    right.set_ylabel("cross-entropy")
    for axes in (left, right):
        _style(axes)
    return _png(figure)


def epsilon_plot(
    rounds: Sequence[Mapping[str, Any]], hospitals: Sequence[str], targets: Sequence[float]
) -> bytes:
    """PNG: cumulative ε by round per hospital (gaps where it sat out), target ε dashed."""
    x = [_round_number(r, i) for i, r in enumerate(rounds)]
    figure = Figure(figsize=(9.6, 3.4), layout="constrained")
    axes = figure.subplots()
    spent = {
        name: _series(as_mapping(r.get("epsilon")).get(name) for r in rounds) for name in hospitals
    }
    for index, (name, values) in enumerate(spent.items()):
        # Hospitals with the same σ, q and steps spend the same ε: shrinking markers drawn on top
        # keep every one of them visible where their lines coincide.
        axes.plot(
            x,
            values,
            marker=MARKERS[index % len(MARKERS)],
            markersize=max(4.0, 10.0 - 2.0 * index),
            linewidth=max(1.0, 3.0 - 0.6 * index),
            color=PALETTE[index % len(PALETTE)],
            label=name,
            zorder=2 + index,
        )
    for target in targets:
        axes.axhline(
            target, linestyle="--", color="#59636e", linewidth=1.2, label=f"target ε = {target:g}"
        )
    axes.set_ylabel("ε (cumulative)")
    finite = [v for values in spent.values() for v in values if math.isfinite(v)]
    highest = max([*finite, *targets], default=1.0)
    axes.set_ylim(0, highest * 1.12 or 1.0)
    _style(axes)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return _png(figure)


def _style(axes: Any) -> None:
    axes.set_xlabel("round")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, color="#e6e9ec", linewidth=0.8)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)


def _limit_scores(axes: Any, values: Iterable[float]) -> None:
    finite = [v for v in values if math.isfinite(v)]
    low = min(finite) if finite else 0.0
    # Scores near 1 would hug the frame; start lower, in round tenths, unless they go lower still.
    axes.set_ylim(max(0.0, math.floor(low * 10) / 10 - 0.05), 1.01)


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=144, facecolor="white")
    return buffer.getvalue()


def _figure(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}">'
        f"<figcaption><strong>{_e(alt)}.</strong> {_e(caption)}</figcaption></figure>"
    )


def _table(
    headers: Sequence[str],
    rows: Sequence[tuple[Sequence[str], bool]],
    *,
    numeric_from: int,
    numeric: Sequence[int] = (),
) -> str:
    """An HTML table of already escaped cells; columns from `numeric_from` on align right."""

    def css(index: int) -> str:
        return ' class="num"' if index >= numeric_from or index in numeric else ""

    head = "".join(f"<th{css(i)}>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for cells, highlight in rows:
        tds = "".join(f"<td{css(i)}>{c}</td>" for i, c in enumerate(cells))
        body.append(f'<tr class="highlight">{tds}</tr>' if highlight else f"<tr>{tds}</tr>")
    return (
        f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


def _definitions(items: Sequence[tuple[str, str]]) -> str:
    """A <dl> from escaped values; the terms are escaped here."""
    return (
        "<dl>" + "".join(f"<dt>{_e(term)}</dt><dd>{value}</dd>" for term, value in items) + "</dl>"
    )


def _hospitals(
    study: Mapping[str, Any], rounds: Sequence[Mapping[str, Any]], privacy: Mapping[str, Any]
) -> list[str]:
    """The study's hospitals in its order, then any that only the rounds or ledgers mention."""
    names = [str(h) for h in as_list(study.get("hospitals"))]
    for r in rounds:
        names += [str(h) for h in as_mapping(r.get("epsilon"))]
        names += [str(h) for h in as_list(r.get("participants"))]
    names += [str(h) for h in privacy]
    return list(dict.fromkeys(names))


def _targets(privacy: Mapping[str, Any]) -> list[float]:
    values = (as_float(as_mapping(p).get("target_epsilon")) for p in privacy.values())
    return sorted({v for v in values if v is not None})


def _round_number(r: Mapping[str, Any], index: int) -> int:
    number = as_int(r.get("round"))
    return index + 1 if number is None else number


def _series(values: Iterable[object]) -> list[float]:
    """Numbers for plotting, NaN (a gap) where a value is missing."""
    return [np.nan if (v := as_float(value)) is None else v for value in values]


def _metric(key: str, value: object) -> str:
    number = as_float(value)
    if number is None:
        return MISSING
    return f"{number * 100:.1f}%" if key == "accuracy" else f"{number:.3f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def _bytes(value: object) -> str:
    number = as_float(value)
    return MISSING if number is None else format_bytes(number)


def _fixed(value: float | None, digits: int) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _scientific(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.0e}" if value < 1e-3 else f"{value:g}"


def _count(value: object) -> str:
    number = as_int(value)
    return MISSING if number is None else f"{number:,}"


def _plain(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
