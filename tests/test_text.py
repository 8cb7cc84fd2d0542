"""Tokeniser and vocabulary of the captions."""

import numpy as np
import pytest

from metricjax import text
from metricjax.errors import UserError

TRAIN = ["A man riding a horse.", "A man, on a horse!", "Two dogs play.",
         "a dog runs"]
TEST = ["A zebra riding a unicycle"]


def test_tokenize_like_karpathy():
  assert text.tokenize("A man's DOG, 2 cats & co-op.") == [
      "a", "man", "s", "dog", "2", "cats", "co", "op"]
  assert text.tokenize("Café  au_lait") == ["café", "au", "lait"]
  assert text.tokenize(" ,; ") == []


def test_vocabulary_from_training_captions_only():
  vocab = text.Vocabulary.build(TRAIN, min_count=2)
  assert vocab.words[:2] == ("<pad>", "<unk>")
  # Most frequent first, ties alphabetical; "dog" (1) and "dogs" (1) dropped.
  assert vocab.words[2:] == ("a", "horse", "man")
  assert vocab.word_id("zebra") == vocab.unk_id == 1
  ids, lengths = vocab.encode(TEST + ["a horse"])
  np.testing.assert_array_equal(lengths, [5, 2])
  np.testing.assert_array_equal(ids, [[2, 1, 1, 2, 1], [2, 3, 0, 0, 0]])
  assert ids.dtype == np.int32 and lengths.dtype == np.int32
  assert vocab.decode(ids[1]) == ["a", "horse"]
  # Test words never enter a vocabulary built from the training split.
  assert "zebra" not in text.Vocabulary.build(TRAIN, min_count=1).words


def test_encode_truncation_and_fixed_width():
  vocab = text.Vocabulary.build(TRAIN, min_count=1)
  ids, lengths = vocab.encode(["a man riding a horse", ""], max_length=4,
                              pad_to=6)
  assert ids.shape == (2, 6)
  assert vocab.decode(ids[0]) == ["a", "man", "riding", "a"]
  assert vocab.decode(ids[1]) == ["<unk>"]
  np.testing.assert_array_equal(lengths, [4, 1])
  with pytest.raises(UserError, match="pad_to"):
    vocab.encode(["a man riding a horse"], pad_to=3)


def test_vocabulary_dict_round_trip():
  vocab = text.Vocabulary.build(TRAIN, min_count=1)
  loaded = text.Vocabulary.from_dict(vocab.to_dict())
  assert loaded.words == vocab.words and loaded.min_count == 1
  with pytest.raises(UserError, match="Not a metricjax vocabulary"):
    text.Vocabulary.from_dict({"words": ["x"]})
