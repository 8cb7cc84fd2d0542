"""Caption tokenisation and the word vocabulary of the text encoder.

Tokens are Karpathy's: lower-case runs of letters and digits, everything
else a separator. The vocabulary is built from the training captions only
(VSE++'s released vocabulary also counted test captions), keeps words seen
at least `min_count` times and is saved as JSON with the checkpoint.
"""

import collections
import dataclasses
import re
from typing import Iterable, Sequence

import numpy as np

from metricjax.errors import UserError

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[^\W_]+")  # Unicode letters and digits.
_FORMAT = "metricjax.vocabulary"


def tokenize(text: str) -> list[str]:
  """'A man, riding a horse!' -> ['a', 'man', 'riding', 'a', 'horse']."""
  return _TOKEN.findall(text.lower())


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
  """Word <-> id; id 0 is <pad>, 1 is <unk>.

  The GRU encoder reads each caption up to its length and keeps its last
  state, so no <start>/<end> tokens are added.
  """
  words: tuple[str, ...]
  min_count: int = 1

  def __post_init__(self):
    specials = (PAD, UNK)
    if tuple(self.words[:len(specials)]) != specials:
      raise UserError(f"A vocabulary must begin with {specials}; this one "
                      f"begins with {tuple(self.words[:len(specials)])}.")
    if len(set(self.words)) != len(self.words):
      raise UserError("The vocabulary lists a word twice.")
    object.__setattr__(self, "_ids", {w: i for i, w in enumerate(self.words)})

  @classmethod
  def build(cls, train_captions: Iterable[str | Sequence[str]], *,
            min_count: int = 4) -> "Vocabulary":
    """From the training captions (strings, or token lists), and only them.

    Words seen fewer than min_count times map to <unk> (VSE++ uses 4).
    Order: most frequent first, ties alphabetical, so builds are repeatable.
    """
    counts = collections.Counter()
    for caption in train_captions:
      counts.update(tokenize(caption) if isinstance(caption, str) else caption)
    kept = sorted((w for w, c in counts.items()
                   if c >= min_count and w not in (PAD, UNK)),
                  key=lambda w: (-counts[w], w))
    return cls((PAD, UNK) + tuple(kept), min_count)

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
    return [self.word_id(w) for w in tokens] or [self.unk_id]

  def encode(self, captions: Iterable[str | Sequence[str]], *,
             max_length: int | None = None,
             pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 (N, L), lengths int32 (N,)), padded with 0 on the right.

    max_length truncates longer captions; L is the longest caption, or
    pad_to when given (a fixed shape compiles once).
    """
    encoded = [self.encode_one(c) for c in captions]
    if max_length is not None:
      if max_length < 1:
        raise UserError(f"max_length={max_length} leaves no room for a word.")
      encoded = [e[:max_length] for e in encoded]
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
            "min_count": self.min_count}

  @classmethod
  def from_dict(cls, d: dict) -> "Vocabulary":
    if d.get("format") != _FORMAT:
      raise UserError("Not a metricjax vocabulary (no 'format': "
                      f"{_FORMAT!r}).")
    return cls(tuple(d["words"]), int(d["min_count"]))
