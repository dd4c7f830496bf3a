"""Toy retrieval models: a synthetic needle task, small transformers that learn it on CPU,
and the analyses of the book's toy chapters (emergence, masking, intrinsic property)."""

from .task import (ALIAS_VOCAB, ASST, BOS, EOS, SEP, SPECIALS, USER, ToyBatch, ToyTask, Vocab,
                   toy_tokenizer, toy_vocab)
from .train import (
    ATTN_ONLY_2L,
    WIDE_4L,
    ToyModelConfig,
    accuracy,
    build_model,
    hf_module,
    to_bridge,
    train,
)
from .analysis import (
    ToyScoreRun,
    best_permutation,
    decode_patterns,
    emergence,
    first_step_copies,
    induction_accuracy,
    match_heads,
    masked_accuracy,
    masking_effect,
    prev_token_induction_scores,
    retrieval_vs_induction,
    toy_retrieval_scores,
)
from .recipes import ATTN_ONLY_3L, RECIPES, Recipe, cache_dir, trained_model
