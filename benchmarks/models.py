"""Random-weight models of the real architectures (no hub access needed), saved as sentence-transformers folders.

Random weights cost exactly what trained ones cost to run; only the vectors are meaningless.
"""

from __future__ import annotations

import re
from pathlib import Path

from common import squad_paragraphs

ARCHITECTURES = {
    # name: (layers, pooling, max_seq_length), all 384 hidden, 12 heads, 1536 intermediate, 30522 vocab
    "all-MiniLM-L6-v2": (6, "mean", 256),
    "bge-small-en-v1.5": (12, "cls", 512),
}
VOCAB_SIZE = 30522


def build_model(name: str, root: Path) -> Path:
    """The sentence-transformers folder of a random-weight model of architecture `name` (cached in root)."""
    out = root / name / "st"
    if (out / "modules.json").is_file():
        return out
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    layers, pooling, max_len = ARCHITECTURES[name]
    hf = root / name / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    words = sorted({w for p in squad_paragraphs() for w in re.findall(r"[a-z]+", p.lower())})
    pieces = [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *pieces, *words]
    vocab += [f"[unused{i}]" for i in range(VOCAB_SIZE - len(vocab))]
    (hf / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(vocab=str(hf / "vocab.txt"), do_lower_case=True)
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=384, num_hidden_layers=layers, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    transformer = models.Transformer(str(hf), max_seq_length=max_len)
    pool = models.Pooling(384, pooling_mode=pooling)
    SentenceTransformer(modules=[transformer, pool, models.Normalize()], device="cpu").save(str(out))
    return out
