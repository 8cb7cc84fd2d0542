"""Caption tokenisation and the word vocabulary of the text encoder.

Tokens are Karpathy's: lower-case runs of letters and digits, everything
else a separator. The vocabulary is built from the training captions only
(VSE++'s released vocabulary also counted test captions), keeps words seen
at least `min_count` times and is saved as JSON with the checkpoint.
"""

import collections
import dataclasses
import json
import os
import re
import tempfile
from typing import Iterable, Sequence

import numpy as np

from metricjax.errors import UserError

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
_TOKEN = re.compile(r"[^\W_]+")  # Unicode letters and digits.
_FORMAT = "metricjax.vocabulary"


def tokenize(text: str) -> list[str]:
  """'A man, riding a horse!' -> ['a', 'man', 'riding', 'a', 'horse']."""
  return _TOKEN.findall(text.lower())


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
  """Word <-> id; id 0 is <pad>, 1 is <unk>, then <start>, <end> if used."""
  words: tuple[str, ...]
  start_end: bool = False
  min_count: int = 1

  def __post_init__(self):
    specials = self._specials(self.start_end)
    if tuple(self.words[:len(specials)]) != specials:
      raise UserError(f"A vocabulary must begin with {specials}; this one "
                      f"begins with {tuple(self.words[:len(specials)])}.")
    if len(set(self.words)) != len(self.words):
      raise UserError("The vocabulary lists a word twice.")
    object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})

  @staticmethod
  def _specials(start_end):
    return (PAD, UNK, START, END) if start_end else (PAD, UNK)

  @classmethod
  def build(cls, train_captions: Iterable[str | Sequence[str]], *,
            min_count: int = 4, start_end: bool = False) -> "Vocabulary":
    """From the training captions (strings, or token lists), and only them.

    Words seen fewer than min_count times map to <unk> (VSE++ uses 4).
    Order: most frequent first, ties alphabetical, so builds are repeatable.
    """
    counts = collections.Counter()
    for caption in train_captions:
      counts.update(tokenize(caption) if isinstance(caption, str) else caption)
    specials = cls._specials(start_end)
    kept = sorted((w for w, c in counts.items()
                   if c >= min_count and w not in specials),
                  key=lambda w: (-counts[w], w))
    return cls(specials + tuple(kept), start_end, min_count)

  def __len__(self) -> int:
    return len(self.words)

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def unk_id(self) -> int:
    return 1

  def word_id(self, word: str) -> int:
    return self._ids.get(word, 1)

  def encode_one(self, caption: str | Sequence[str]) -> list[int]:
    """Ids of one caption; never empty (an empty caption is [<unk>])."""
    tokens = tokenize(caption) if isinstance(caption, str) else list(caption)
    ids = [self.word_id(w) for w in tokens] or [self.unk_id]
    if self.start_end:
      ids = [self._ids[START]] + ids + [self._ids[END]]
    return ids

  def encode(self, captions: Iterable[str | Sequence[str]], *,
             max_length: int | None = None,
             pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 (N, L), lengths int32 (N,)), padded with 0 on the right.

    max_length truncates longer captions (keeping <end> when used); L is the
    longest caption, or pad_to when given (a fixed shape compiles once).
    """
    encoded = [self.encode_one(c) for c in captions]
    if max_length is not None:
      if max_length < (3 if self.start_end else 1):
        raise UserError(f"max_length={max_length} leaves no room for a word.")
      keep_end = int(self.start_end)
      encoded = [e if len(e) <= max_length
                 else e[:max_length - keep_end] + e[len(e) - keep_end:]
                 for e in encoded]
    lengths = np.array([len(e) for e in encoded], np.int32)
    width = int(lengths.max(initial=1))
    if pad_to is not None:
      if pad_to < width:
        raise UserError(f"pad_to={pad_to} is shorter than the longest "
                        f"caption ({width} tokens); raise it or set "
                        "max_length.")
      width = pad_to
    ids = np.zeros((len(encoded), width), np.int32)
    for i, e in enumerate(encoded):
      ids[i, :len(e)] = e
    return ids, lengths

  def decode(self, ids: Sequence[int]) -> list[str]:
    """Words of one id row, up to the padding."""
    return [self.words[i] for i in ids if i != self.pad_id]

  def to_dict(self) -> dict:
    return {"format": _FORMAT, "version": 1, "words": list(self.words),
            "start_end": self.start_end, "min_count": self.min_count}

  @classmethod
  def from_dict(cls, d: dict) -> "Vocabulary":
    if d.get("format") != _FORMAT:
      raise UserError("Not a metricjax vocabulary (no 'format': "
                      f"{_FORMAT!r}).")
    return cls(tuple(d["words"]), bool(d["start_end"]), int(d["min_count"]))

  def save(self, path: str | os.PathLike) -> None:
    """Writes the JSON atomically (temporary file + rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(self.to_dict(), f, ensure_ascii=False)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Vocabulary":
    try:
      with open(path, encoding="utf-8") as f:
        d = json.load(f)
    except FileNotFoundError:
      raise UserError(f"Vocabulary file {path} does not exist.") from None
    except json.JSONDecodeError as e:
      raise UserError(
          f"Vocabulary file {path} is not valid JSON ({e}).") from None
    try:
      return cls.from_dict(d)
    except UserError as e:
      raise UserError(f"{path}: {e}") from None
