"""A tiny llama-architecture model as a GGUF file, with random (seeded) weights, for the
conformance suite's Ollama: two layers of width 64, a SentencePiece vocabulary of the three
control tokens, the 256 byte tokens and a few words. It answers nonsense, fast, on any CPU;
what it proves is that the rendered Ollama imports and serves a GGUF file.

Written with the ``gguf`` package (llama.cpp's own GGUF writer, on PyPI)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

WIDTH = 64
LAYERS = 2
HEADS = 4
FEED_FORWARD = 128
CONTEXT = 256
WORDS = ["▁hi", "▁hello", "▁the", "▁a", "▁model", "▁tiny", "▁yes", "▁no", "."]


def _vocabulary() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    tokens += WORDS
    types += [gguf.TokenType.NORMAL] * len(WORDS)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(WORDS))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """Write the model to ``path`` (its directory created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocabulary()
    vocab = len(tokens)
    head_dim = WIDTH // HEADS

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("aistack-tiny")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def norm() -> np.ndarray:
        return np.ones(WIDTH, dtype=np.float32)

    # numpy's (rows, columns) is GGUF's (columns, rows): an (out, in) matrix as llama.cpp
    # stores it.
    writer.add_tensor("token_embd.weight", weight(vocab, WIDTH))
    for i in range(LAYERS):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(WIDTH, WIDTH))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(WIDTH, WIDTH))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(WIDTH, WIDTH))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(WIDTH, WIDTH))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(FEED_FORWARD, WIDTH))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(FEED_FORWARD, WIDTH))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(WIDTH, FEED_FORWARD))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", weight(vocab, WIDTH))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
