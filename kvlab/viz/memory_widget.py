"""Memory calculator: pick a model, a context length, a batch and a dtype; see the KV cache it needs."""
from __future__ import annotations

import ipywidgets as widgets
import plotly.graph_objects as go

from .. import memory
from .figures import presets_figure

CONTEXTS = [2**k for k in range(9, 18)]  # 512 … 131072


def describe(model: str, context_len: int, batch: int, dtype: str) -> str:
    shape = memory.resolve_shape(model)
    per_token = memory.kv_bytes_per_token(shape, dtype)
    total = memory.kv_cache_bytes(shape, context_len, batch, dtype)
    return (f"<b>{shape.name}</b> ({shape.attention_kind}: {shape.num_heads} query heads, {shape.num_kv_heads} KV heads, "
            f"{shape.num_layers} layers, head dim {shape.head_dim}) — 2 × {shape.num_layers} × {shape.num_kv_heads} × "
            f"{shape.head_dim} × {memory.dtype_bytes(dtype):g} B = <b>{per_token:,} B per token</b>; "
            f"× {context_len:,} tokens × batch {batch} = <b>{memory.format_bytes(total)}</b>")


def memory_calculator(model: str = "Llama-3-8B", context_len: int = 8192, batch: int = 1, dtype: str = "bfloat16"):
    """An ipywidgets panel over kvlab.memory's presets, with a live plotly bar chart."""
    preset = widgets.Dropdown(options=list(memory.PRESETS), value=memory.resolve_shape(model).name, description="model")
    context = widgets.SelectionSlider(options=[(f"{c:,}", c) for c in CONTEXTS], value=context_len, description="context")
    batch_size = widgets.IntSlider(value=batch, min=1, max=64, description="batch")
    precision = widgets.Dropdown(options=["float32", "bfloat16", "fp8", "int4"], value=dtype, description="dtype")
    caption = widgets.HTML()
    figure = go.FigureWidget(presets_figure(context_len, batch, dtype, highlight=preset.value))

    def redraw(_=None) -> None:
        fresh = presets_figure(context.value, batch_size.value, precision.value, highlight=preset.value)
        with figure.batch_update():
            figure.data[0].x = fresh.data[0].x
            figure.data[0].text = fresh.data[0].text
            figure.data[0].marker.color = fresh.data[0].marker.color
            figure.layout.title = fresh.layout.title
        caption.value = describe(preset.value, context.value, batch_size.value, precision.value)

    for control in (preset, context, batch_size, precision):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([preset, precision]), widgets.HBox([context, batch_size]), caption, figure])
