"""Convert a model YAML's GGUF file into an fp16 safetensors directory that vLLM can load.

vLLM has no GGUF loader on CPU. Run in a venv with torch and transformers (the vLLM one):
    python -m lokal.backends.vllm.convert --config configs/smollm2-135m-instruct.yaml --out DIR
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lokal.backends.spec import ModelSpec


def gguf_chat_template(gguf: Path) -> str | None:
    """The chat template in the GGUF metadata, so both engines render the same prompt."""
    from transformers.integrations.gguf.reader import read_gguf_metadata

    metadata: dict[str, Any] = read_gguf_metadata(str(gguf))[0]
    template = metadata.get("tokenizer.chat_template")
    return template if isinstance(template, str) else None


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf.parent), gguf.name
    # Dequantized on load; the GGUF quantizer's model cannot be saved, so its weights are copied
    # into a fresh model of the same config.
    loaded = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True),
        dtype=torch.float16)
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings show up as a missing lm_head; anything else is a broken conversion.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    tmp = out.with_name(out.name + ".partial")
    fresh.save_pretrained(tmp, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    template = gguf_chat_template(gguf)
    if template is not None:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lokal.backends.vllm.convert",
                                     description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="a model YAML with `gguf`")
    parser.add_argument("--out", type=Path, required=True, help="the HF directory to write")
    args = parser.parse_args(argv)
    gguf = ModelSpec.from_yaml(args.config).gguf_path()
    out: Path = args.out
    if (out / "config.json").is_file():
        print(f"{out} already exists; nothing to do")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    convert(gguf, out)
    print(f"converted {gguf} -> {out} in {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
