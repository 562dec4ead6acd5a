"""The CLIP byte-pair-encoding tokenizer (docs/model-facts.md section 5), built on the `tokenizers` library.

Prompts are cleaned in Python exactly as SD 1.5's reference tokenizer (transformers' pure-Python
`CLIPTokenizer` with ftfy installed) cleans them; the split, byte mapping and BPE merges then run in
Rust. Output rows are `[bos, up to 75 tokens, eos, pad, ...]`, 77 ids long.
"""

from __future__ import annotations

import gzip
import json
import re
import warnings
from functools import lru_cache
from pathlib import Path

import ftfy
import tokenizers
import torch
from tokenizers import Regex, models, pre_tokenizers

VOCAB_GZ = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
N_MERGES = 49152 - 256 - 2  # 48,894 merges were used to train CLIP; the gz holds more, unused
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
EOS = 49407  # id of <|endoftext|> in the CLIP vocabulary; SD 1.x pads with it, bigG (SDXL) with 0
CONTEXT = 77  # CLIP's text positions: bos + 75 tokens + eos

# Pre-tokens: the English contractions, letter runs, single digits, runs of anything else that is
# not whitespace; whitespace between them is dropped (openai/CLIP simple_tokenizer).
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

Vocab = tuple[dict[str, int], list[tuple[str, str]]]  # token -> id, merges in rank order


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table: the printable Latin-1 bytes stand for themselves, the other 68
    bytes map to chr(256 + n) in increasing byte order, so BPE never sees whitespace or control bytes.
    The table's order is the order of the first 256 vocabulary entries."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(others)})
    return table


def clean(text: str) -> str:
    """The reference cleaning: ftfy repairs mojibake and typography, whitespace runs become one space,
    the ends are stripped, everything is lowercased."""
    return re.sub(r"\s+", " ", ftfy.fix_text(text)).strip().lower()


def vendored_vocab() -> Vocab:
    """Vocabulary and ranked merges from the vendored gz (docs/model-facts.md section 5): 256 byte
    characters, the same with the end-of-word mark `</w>`, one entry per merge, then bos and eos:
    49,408 entries."""
    lines = gzip.decompress(VOCAB_GZ.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1 : N_MERGES + 1]]  # line 0 is a version header
    chars = list(bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges), BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def read_vocab_files(vocab_json: str | Path, merges_txt: str | Path) -> Vocab:
    """Vocabulary and merges from a diffusers/transformers `tokenizer/` folder's two files."""
    vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
    lines = Path(merges_txt).read_text(encoding="utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return vocab, merges


def build_bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> tokenizers.Tokenizer:
    """The split + byte-level + BPE pipeline. BPE marks the last symbol of every pre-token with `</w>`
    and merges the lowest-ranked adjacent pair until none is in the merge list."""
    for special in (BOS_TOKEN, EOS_TOKEN):
        if special not in vocab:
            raise ValueError(f"the vocabulary has no {special} entry; it is not a CLIP vocabulary")
    bpe = tokenizers.Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            end_of_word_suffix="</w>",
            continuing_subword_prefix="",
            fuse_unk=False,
            unk_token=EOS_TOKEN,
        )
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # Special tokens typed in a prompt map to their own ids, as in the reference.
    bpe.add_special_tokens([BOS_TOKEN, EOS_TOKEN])
    return bpe


@lru_cache(maxsize=1)
def vendored_bpe() -> tokenizers.Tokenizer:
    """The vendored vocabulary's pipeline, built once per process."""
    return build_bpe(*vendored_vocab())


class Tokenizer:
    """prompts -> LongTensor [B, 77]: `[bos, tokens (at most 75), eos, pad, pad, ...]`."""

    def __init__(self, bpe: tokenizers.Tokenizer, pad_id: int = EOS, length: int = CONTEXT):
        self.bpe = bpe
        self.bos_id = bpe.token_to_id(BOS_TOKEN)
        self.eos_id = bpe.token_to_id(EOS_TOKEN)
        self.pad_id = pad_id
        self.length = length

    def id_problem(self, rows: int) -> str | None:
        """Why this tokenizer cannot feed a text encoder whose embedding table has `rows` rows (an id it
        can give, a token's or the padding's, is `rows` or more: an IndexError mid-run), or None."""
        largest = max(self.bpe.get_vocab(with_added_tokens=True).values(), default=-1)
        if largest >= rows:
            return f"it has token ids up to {largest}, but the text encoder embeds only ids below {rows}"
        if self.pad_id >= rows:
            return f"its padding id {self.pad_id} is beyond the text encoder's {rows} embeddings"
        return None

    @classmethod
    def sd1(cls, pad_id: int = EOS) -> Tokenizer:
        """The vendored CLIP vocabulary (CLIP-L and bigG share it); SDXL's bigG encoder wants pad_id=0."""
        return cls(vendored_bpe(), pad_id)

    @classmethod
    def from_files(cls, vocab_json: str | Path, merges_txt: str | Path, pad_id: int = EOS) -> Tokenizer:
        """From a diffusers `tokenizer/` folder: `vocab.json` and `merges.txt` (the same data as the gz)."""
        return cls(build_bpe(*read_vocab_files(vocab_json, merges_txt)), pad_id)

    def __call__(self, prompts: str | list[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"Tokenizer takes a string or a list of strings, got {type(prompts).__name__}")
        if not prompts:
            raise ValueError("Tokenizer got an empty list of prompts; pass at least one string")
        encodings = self.bpe.encode_batch([clean(p) for p in prompts], add_special_tokens=False)
        keep = self.length - 2
        ids = torch.full((len(prompts), self.length), self.pad_id, dtype=torch.long)
        for row, (prompt, encoding) in enumerate(zip(prompts, encodings, strict=True)):
            tokens = encoding.ids
            if len(tokens) > keep:
                short = prompt if len(prompt) <= 40 else prompt[:37] + "..."
                warnings.warn(
                    f"prompt {short!r} is {len(tokens)} tokens long; CLIP reads {keep}, so the last "
                    f"{len(tokens) - keep} were dropped",
                    UserWarning,
                    stacklevel=2,
                )
            row_ids = [self.bos_id, *tokens[:keep], self.eos_id]
            ids[row, : len(row_ids)] = torch.tensor(row_ids)
        return ids
