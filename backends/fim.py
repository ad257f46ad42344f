"""Fill-in-the-middle prompts built from a tokenizer's own FIM tokens, for any engine."""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from lokal.backends.errors import InvalidParameter


@dataclass(frozen=True, slots=True)
class FimFormat:
    """Special tokens of one FIM family, laid out prefix-suffix-middle (PSM)."""

    prefix: str
    suffix: str
    middle: str

    def render(self, before: str, after: str) -> str:
        return f"{self.prefix}{before}{self.suffix}{after}{self.middle}"


# The families in common use. The first whose three tokens are all in the vocabulary wins.
FIM_FORMATS: tuple[FimFormat, ...] = (
    FimFormat("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SmolLM
    FimFormat("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    FimFormat("<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>"),  # DeepSeek-Coder
)


def find_fim_format(vocab: Container[str]) -> FimFormat | None:
    for fmt in FIM_FORMATS:
        if fmt.prefix in vocab and fmt.suffix in vocab and fmt.middle in vocab:
            return fmt
    return None


def no_fim(model: str) -> InvalidParameter:
    """The refusal of `suffix` for a model whose vocabulary has no FIM tokens."""
    return InvalidParameter(
        f"model {model!r} has no fill-in-the-middle tokens in its vocabulary, so `suffix` "
        "cannot be honoured", param="suffix")


def fim_prompt(before: str, after: str, fmt: FimFormat | None, model: str) -> str:
    """The text prompt asking the model for what goes between `before` and `after`."""
    if fmt is None:
        raise no_fim(model)
    return fmt.render(before, after)
