"""A byte-level BPE tokenizer trained on the spot (the micro model's, and the test models')."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def train_byte_level_bpe(
    texts: Iterable[str], vocab_size: int, end_token: str = "<|endoftext|>", model_max_length: int = 512
) -> Any:
    """A ``PreTrainedTokenizerFast`` over byte-level BPE, ``end_token`` as end of text and padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[end_token],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, eos_token=end_token, pad_token=end_token, model_max_length=model_max_length
    )
