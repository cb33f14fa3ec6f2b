"""Tokenizers: SentencePiece (BPE or unigram) and a word-level vocabulary.

Special ids are the same for every tokenizer and every model:

    <pad> = 0   <unk> = 1   <bos> = 2   <eos> = 3

Both tokenizers decode back to detokenized, cased text (what sacreBLEU expects). A
tokenizer serializes to a plain dict (``state()``), so a checkpoint carries its own, and
to a folder (``save``/``load``) beside an exported model.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from pathlib import Path

import sentencepiece as spm

from seq2seq.data.corpora import DataError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
WORD_START = "\u2581"  # marks a token that follows a space, as SentencePiece does


class SentencePieceTokenizer:
    """A SentencePiece model whose own ids are the token ids, or, given ``vocab`` (the piece
    of each id, the specials at 0-3), one whose pieces are looked up in that list: the
    shared vocabulary of an imported model (seq2seq/marian.py), where a piece the list lacks
    is <unk>."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, vocab: list[str] | None = None):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab = list(vocab) if vocab is not None else None
        if self.vocab is None:
            ids = (self.sp.pad_id(), self.sp.unk_id(), self.sp.bos_id(), self.sp.eos_id())
            if ids != (PAD, UNK, BOS, EOS):
                raise DataError(f"SentencePiece model has special ids {ids}, expected {(PAD, UNK, BOS, EOS)}")
            return
        if len(self.vocab) <= EOS or not all(isinstance(p, str) for p in self.vocab):
            raise DataError(f"a vocabulary is a list of more than {EOS + 1} pieces, the specials first")
        self.index = {p: i for i, p in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            twice = sorted({p for p in self.vocab if self.vocab.count(p) > 1})[:5]
            raise DataError(f"the vocabulary lists piece(s) {twice} more than once; each id needs its own piece")

    @classmethod
    def train(cls, sentences: list[str], vocab_size: int, model_type: str = "bpe", seed: int = 1):
        model = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences),
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
                pad_piece=SPECIALS[PAD], unk_piece=SPECIALS[UNK],
                bos_piece=SPECIALS[BOS], eos_piece=SPECIALS[EOS],
                # Our own normalization has run already; SentencePiece's NFKC would make
                # decoding lossy. Byte fallback makes any character, even unseen, round-trip.
                normalization_rule_name="identity",
                character_coverage=1.0,
                byte_fallback=True,
                hard_vocab_limit=False,
                input_sentence_size=2_000_000,
                shuffle_input_sentence=True,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as e:
            raise DataError(f"SentencePiece training failed: {e}; try a different --vocab-size") from None
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() if self.vocab is None else len(self.vocab)

    def encode(self, text: str) -> list[int]:
        if self.vocab is None:
            return self.sp.encode(text)
        return [self.index.get(p, UNK) for p in self.vocab_pieces(text)]

    def pieces(self, text: str) -> list[str]:
        if self.vocab is None:
            return self.sp.encode(text, out_type=str)
        return [p if p in self.index else SPECIALS[UNK] for p in self.vocab_pieces(text)]

    def vocab_pieces(self, text: str) -> list[str]:
        """A leading target-language code (">>fra<<", as multilingual OPUS-MT models take) is
        one piece, the rest SentencePiece's: MarianTokenizer's rule."""
        end = text.find("<<") if text.startswith(">>") else -1
        code, text = ([text[:end + 2]], text[end + 2:]) if end != -1 else ([], text)
        return code + self.sp.encode(text, out_type=str)

    def decode(self, ids: list[int]) -> str:
        kept = [i for i in ids if i > EOS or i == UNK]
        if self.vocab is None:
            return self.sp.decode(kept)
        # A piece of the shared vocabulary that this side's model lacks keeps its word marks
        # through decode_pieces; they become spaces afterwards, as in MarianTokenizer.
        return self.sp.decode_pieces([self.vocab[i] for i in kept]).replace(WORD_START, " ").strip()

    def id_pieces(self, ids: list[int]) -> list[str]:
        if self.vocab is None:
            return [self.sp.id_to_piece(i) for i in ids]
        return [self.vocab[i] for i in ids]

    def state(self) -> dict:
        state = {"kind": self.kind, "model_proto": self.model_proto}
        if self.vocab is not None:
            state["vocab"] = self.vocab
        return state


class WordTokenizer:
    """Words and punctuation marks, each token marked when a space precedes it, so that
    decoding restores the text exactly (up to words outside the vocabulary)."""

    kind = "word"
    pattern = re.compile(r"\w+|[^\w\s]")

    def __init__(self, tokens: list[str]):
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise DataError(f"word vocabulary must start with {SPECIALS}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def split(cls, text: str) -> list[str]:
        out = []
        for m in cls.pattern.finditer(text):
            spaced = m.start() == 0 or text[m.start() - 1].isspace()
            out.append(WORD_START + m.group() if spaced else m.group())
        return out

    @classmethod
    def train(cls, sentences: list[str], min_freq: int = 1, max_size: int = 0):
        counts = Counter(tok for s in sentences for tok in cls.split(s))
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size:
            kept = kept[: max(max_size - len(SPECIALS), 0)]
        return cls(list(SPECIALS) + kept)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(t, UNK) for t in self.split(text)]

    def pieces(self, text: str) -> list[str]:
        return [t if t in self.index else SPECIALS[UNK] for t in self.split(text)]

    def decode(self, ids: list[int]) -> str:
        words = []
        for i in ids:
            if i in (PAD, BOS, EOS):
                continue
            tok = self.tokens[i] if i != UNK and 0 <= i < len(self.tokens) else WORD_START + SPECIALS[UNK]
            words.append(" " + tok[1:] if tok.startswith(WORD_START) else tok)
        return "".join(words).strip()

    def id_pieces(self, ids: list[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def state(self) -> dict:
        return {"kind": self.kind, "tokens": self.tokens}


def read_json(path: Path, missing: str, error: type[Exception] = DataError):
    """The JSON value in ``path``; ``error`` naming the file and the problem otherwise
    ("{path}: {missing}" when there is no such file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{path}: unreadable ({e})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def read_vocab(path: Path, named_in: Path) -> list[str]:
    vocab = read_json(path, f"vocabulary named in {named_in} is missing")
    if not isinstance(vocab, list):
        raise DataError(f"{path}: a vocabulary is a JSON list of pieces, one per token id")
    return vocab


def tokenizer_from_state(state: dict):
    if state.get("kind") == "sentencepiece":
        return SentencePieceTokenizer(state["model_proto"], state.get("vocab"))
    if state.get("kind") == "word":
        return WordTokenizer(state["tokens"])
    raise DataError(f"unknown tokenizer kind {state.get('kind')!r}; expected 'sentencepiece' or 'word'")


class PairTokenizer:
    """The source and target tokenizers of a model (one object when the vocabulary is joint)."""

    def __init__(self, src, tgt):
        self.src, self.tgt = src, tgt

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    @classmethod
    def train(cls, pairs: list[tuple[str, str]], cfg) -> "PairTokenizer":
        """Train on the given (training) pairs as a DataConfig says."""
        sides = ([s for s, _ in pairs], [t for _, t in pairs])
        if cfg.tokenizer == "sentencepiece":
            def make(sentences):
                return SentencePieceTokenizer.train(sentences, cfg.vocab_size, cfg.sp_model_type, cfg.shuffle_seed)
        else:
            def make(sentences):
                return WordTokenizer.train(sentences, cfg.min_freq, cfg.vocab_size)
        if cfg.joint_vocab:
            joint = make(sides[0] + sides[1])
            return cls(joint, joint)
        return cls(make(sides[0]), make(sides[1]))

    def state(self) -> dict:
        if self.joint:
            return {"joint": self.src.state()}
        return {"src": self.src.state(), "tgt": self.tgt.state()}

    @classmethod
    def from_state(cls, state: dict) -> "PairTokenizer":
        if "joint" in state:
            joint = tokenizer_from_state(state["joint"])
            return cls(joint, joint)
        return cls(tokenizer_from_state(state["src"]), tokenizer_from_state(state["tgt"]))

    def save(self, folder: str | Path) -> None:
        """Write tokenizer.json and, for SentencePiece, the .model files beside it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {}
        for side, tok in (("joint", self.src),) if self.joint else (("src", self.src), ("tgt", self.tgt)):
            if tok.kind == "sentencepiece":
                (folder / f"{side}.model").write_bytes(tok.model_proto)
                meta[side] = {"kind": tok.kind, "model": f"{side}.model"}
                if tok.vocab is not None:  # a JSON list: the piece of each token id
                    (folder / f"{side}.vocab.json").write_text(json.dumps(tok.vocab, ensure_ascii=False) + "\n",
                                                               encoding="utf-8")
                    meta[side]["vocab"] = f"{side}.vocab.json"
            else:
                meta[side] = tok.state()
        meta["special_ids"] = dict(zip(SPECIALS, (PAD, UNK, BOS, EOS)))
        (folder / "tokenizer.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "PairTokenizer":
        folder = Path(folder)
        path = folder / "tokenizer.json"
        meta = read_json(path, "not found; a tokenizer folder holds tokenizer.json")
        state = {}
        for side in ("joint", "src", "tgt"):
            if side in meta:
                entry = dict(meta[side])
                if entry.get("kind") == "sentencepiece":
                    model = folder / entry["model"]
                    if not model.exists():
                        raise DataError(f"{model}: SentencePiece model named in {path} is missing")
                    entry["model_proto"] = model.read_bytes()
                    if "vocab" in entry:
                        entry["vocab"] = read_vocab(folder / entry["vocab"], path)
                state[side] = entry
        return cls.from_state(state)
