"""Tiny randomly initialised models for plumbing tests and offline demos (no hub needed).

``make_tiny_causal_lm(path)`` writes a 2-layer Llama (hidden 64) with the WordPiece tokenizer
of the bundled MiniLM model and a chat template; ``make_tiny_reward_model(path)`` writes the
same network with a scalar sequence-classification head. Their outputs are noise: they test that
data flows through generation, scoring and training, not the quality of anything.
"""

from __future__ import annotations

from pathlib import Path

# bos at the start, "role: content" turns each closed by eos, "assistant:" as the generation prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def tiny_tokenizer():  # -> PreTrainedTokenizerFast
    """MiniLM's WordPiece vocabulary as a causal-LM tokenizer: [CLS] = bos (added once, at the
    start), [SEP] = eos, [PAD] = pad, and the chat template above."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from dataforge.embed import model_path

    tok = Tokenizer.from_file(str(Path(model_path(None)) / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    bos = tok.token_to_id("[CLS]")
    tok.post_processor = TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="[CLS]", eos_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 512
    return fast


def _config(tok, **extra):  # -> LlamaConfig
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        **extra,
    )


def make_tiny_causal_lm(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` + tokenizer to ``path``."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    path = Path(path)
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_config(tok))
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny_reward_model(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``LlamaForSequenceClassification`` (one scalar) + tokenizer to ``path``."""
    import torch
    from transformers import LlamaForSequenceClassification

    path = Path(path)
    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(_config(tok, num_labels=1))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
