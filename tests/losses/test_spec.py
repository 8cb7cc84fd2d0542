"""losses/spec.py: a loss with its miner in one word, as configs' `loss=`
and compare_losses' rows name them."""

import pytest

from metricjax.config_utils import load_config
from metricjax.errors import UserError
from metricjax.losses import spec


@pytest.mark.parametrize("text, want", [
    ("ms", ("ms", None)),
    ("contrastive+multi_similarity_miner",
     ("contrastive", {"name": "multi_similarity"})),
    ("triplet_margin+triplet_margin_miner:semihard",
     ("triplet_margin", {"name": "triplet_margin",
                         "type_of_triplets": "semihard"})),
    ("ms+multi_similarity_miner:epsilon=0.2",
     ("ms", {"name": "multi_similarity", "epsilon": 0.2})),
    ("triplet_margin+triplet_margin_miner:hard:margin=0.1",
     ("triplet_margin", {"name": "triplet_margin", "type_of_triplets": "hard",
                         "margin": 0.1})),
])
def test_parse_and_label_round_trip(text, want):
  assert spec.parse(text) == want
  assert spec.parse(spec.label(*want)) == want


@pytest.mark.parametrize("text, words", [
    ("contrastive+", "or LOSS.MINER_miner"),
    ("contrastive+multi_similarity", "multi_similarity_miner"),
    ("contrastive+multi_similarity_miner:semihard", "key=value"),
])
def test_bad_specs_say_how_to_write_one(text, words):
  with pytest.raises(UserError, match=words):
    spec.parse(text)


def test_a_config_file_takes_a_loss_with_its_miner():
  config = load_config("configs/compact_involution.py:"
                       "loss=contrastive+multi_similarity_miner:epsilon=0.2")
  assert config.loss.name == "contrastive"
  assert dict(config.loss.miner) == {"name": "multi_similarity",
                                     "epsilon": 0.2}
