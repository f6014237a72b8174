"""The claims ledger as a table: each claim, its verdict coloured by kind, the number that decides it, the notebook
that explains it, and the GPU result recorded for it where one exists (kvlab.claims computes; this only draws)."""
from __future__ import annotations

import html

KIND_COLOURS = {"holds": "#0b6e4f", "holds only when": "#8a5a00", "wrong": "#b00020", "not measurable here": "#555"}


def ledger_table_html(findings, claims: dict[int, str], recorded: dict[int, str] | None = None) -> str:
    recorded = recorded or {}
    rows = []
    for f in findings:
        colour = KIND_COLOURS[f.kind]
        gpu = html.escape(recorded.get(f.number, "—"))
        rows.append(f"<tr><td>{f.number}</td><td style='text-align:left'>{html.escape(claims[f.number])}</td>"
                    f"<td style='text-align:left;color:{colour}'><b>{html.escape(f.verdict)}</b></td>"
                    f"<td style='text-align:left'>{html.escape(f.evidence)}</td>"
                    f"<td><a href='{f.notebook}'>{html.escape(f.notebook.split('_')[0])}</a></td>"
                    f"<td style='text-align:left'>{gpu}</td><td>{f.seconds:.1f} s</td></tr>")
    return ("<table><tr><th>#</th><th style='text-align:left'>the claim</th><th style='text-align:left'>verdict, "
            "here</th><th style='text-align:left'>the number that decides it</th><th>explained in</th>"
            "<th style='text-align:left'>recorded on a GPU</th><th>took</th></tr>" + "".join(rows) + "</table>")


def verdict_counts(findings) -> dict[str, int]:
    counts = {kind: 0 for kind in KIND_COLOURS}
    for f in findings:
        counts[f.kind] += 1
    return counts
