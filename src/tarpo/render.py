"""HTML views of trajectories with soft (latent) steps highlighted."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

STYLE = """<style>
body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}
.traj{border:1px solid #ddd;border-radius:6px;padding:.6em .9em;margin:1em 0}
.meta{color:#666;font-size:.85em;margin-bottom:.4em}
.ok{color:#187a2f}.bad{color:#b3261e}
.tok{white-space:pre-wrap;font-family:ui-monospace,monospace}
.soft{background:#ffd89a;border-radius:3px}
.answer{border-bottom:2px solid #7aa7ff}
.latent{color:#5a3e9b;font-family:ui-monospace,monospace;font-size:.9em}
</style>"""


def token_spans(tokenizer: Any, tokens: Sequence[int], soft: Sequence[float], thinking: Sequence[bool]) -> str:
    """One <span> per token; a token whose following input was soft gets the 'soft' class."""
    parts = []
    for tok, is_soft, think in zip(tokens, soft, thinking):
        text = tokenizer.decode([int(tok)])
        classes = ["tok"] + (["soft"] if is_soft else []) + ([] if think else ["answer"])
        parts.append(f'<span class="{" ".join(classes)}">{html.escape(text)}</span>')
    return "".join(parts)


def trajectories_html(title: str, items: Sequence[dict[str, Any]]) -> str:
    """`items`: dicts with 'question', 'spans' (from token_spans), 'correct', 'answer', 'gold' and optional
    'soft_ratio' and 'latent_steps' (ATP-Latent: the text the decoder reads from each latent pair)."""
    blocks = []
    for i, item in enumerate(items):
        verdict = '<span class="ok">correct</span>' if item.get("correct") else '<span class="bad">wrong</span>'
        soft = f" &middot; soft ratio {item['soft_ratio']:.2f}" if item.get("soft_ratio") is not None else ""
        blocks.append(
            f'<div class="traj"><div class="meta">#{i} &middot; {verdict} &middot; answer '
            f"{html.escape(str(item.get('answer')))} &middot; gold {html.escape(str(item.get('gold')))}{soft}</div>"
            f"<div><b>Q:</b> {html.escape(item['question'])}</div>{_latent_steps(item)}<div>{item['spans']}</div></div>"
        )
    legend = '<p><span class="tok soft">highlighted</span>: the next input was a soft (latent) mixture; ' \
             '<span class="tok answer">underlined</span>: answer phase.</p>'
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}</head>" \
           f"<body><h1>{html.escape(title)}</h1>{legend}{''.join(blocks)}</body></html>"


def _latent_steps(item: dict[str, Any]) -> str:
    steps = item.get("latent_steps")
    if steps is None:
        return ""
    read = " | ".join(html.escape(t) for t in steps) if steps else "(no latent step)"
    return f'<div class="latent"><b>latents read as:</b> {read}</div>'
