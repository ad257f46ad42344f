"""What a llama.cpp decode step costs by batch shape, engine only (no server): rows per
sequence, sequences per step, and drafts on some sequences, as lokal's scheduler builds them
(one KV stream per slot, n_ubatch = n_batch). The basis of speculation.step_rows.

    .venv/bin/python bench/step_shapes.py [--reps 15] [--threads N] [--context 300]
                                          [--flash-attn auto|on|off]

Every sequence first holds `context` tokens; each shape is then decoded `reps` times
(interleaved with the other shapes, so the machine's drift spreads over all) and its new cells
removed again. Prints the median milliseconds per shape and a least-squares fit
step = fixed + per_row * rows over the one-pass shapes (every sequence the same rows: llama.cpp
splits a batch whose sequences differ into several passes over the weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import llama_cpp
from harness import REPO

SHAPES = {  # rows per sequence, by slot
    "1 seq x 1": [1], "1 seq x 5": [5], "1 seq x 9": [9], "1 seq x 17": [17],
    "8 seqs x 1": [1] * 8, "8 x 1, slot 0 +4": [5] + [1] * 7,
    "8 x 1, slots 0,1 +4": [5, 5] + [1] * 6, "8 x 1, slots 0,3 +4": [5, 1, 1, 5, 1, 1, 1, 1],
    "8 x 1, drafts 2,4,8,16": [3, 1, 5, 1, 9, 1, 17, 1], "8 seqs x 5": [5] * 8,
    "8 seqs x 9": [9] * 8,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--flash-attn", choices=["auto", "on", "off"], default="auto",
                        help="llama.cpp's flash attention (lokal leaves it on auto)")
    args = parser.parse_args()
    import sys
    sys.path.insert(0, str(REPO))
    from lokal.backends.spec import DEFAULT_CONFIG, ModelSpec

    gguf = str(ModelSpec.from_yaml(DEFAULT_CONFIG).gguf_path())
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(gguf.encode(),
                                                 llama_cpp.llama_model_default_params())
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified = 8 * 2048, 8, False
    params.n_batch = params.n_ubatch = 136
    params.n_threads = params.n_threads_batch = args.threads
    params.flash_attn_type = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
                              "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                              "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}[args.flash_attn]
    ctx = llama_cpp.llama_init_from_model(model, params)
    mem = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(rows: list[tuple[int, int]], logits: bool) -> None:
        batch.n_tokens = len(rows)
        for i, (seq, pos) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = 100 + i % 50, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    for seq in range(8):
        for start in range(0, args.context, 100):
            decode([(seq, p) for p in range(start, min(args.context, start + 100))], False)
    times: dict[str, list[float]] = {name: [] for name in SHAPES}
    for _ in range(args.reps):
        for name, shape in SHAPES.items():
            rows = [(seq, args.context + j) for seq, k in enumerate(shape) for j in range(k)]
            started = time.perf_counter()
            decode(rows, True)
            times[name].append(time.perf_counter() - started)
            for seq in range(len(shape)):
                llama_cpp.llama_memory_seq_rm(mem, seq, args.context, -1)
    points: list[tuple[int, float]] = []
    for name, shape in SHAPES.items():
        ms = statistics.median(times[name]) * 1000
        if len(set(shape)) == 1:
            points.append((sum(shape), ms))
        print(f"{name:26s} {sum(shape):3d} rows  {ms:7.1f} ms")
    fit: Any = statistics.linear_regression([float(r) for r, _ in points], [t for _, t in points])
    print(f"fit over the one-pass shapes: {fit.intercept:.1f} ms + {fit.slope:.2f} ms per row "
          f"(step_rows ~ {fit.intercept / fit.slope:.2f})")


if __name__ == "__main__":
    main()
