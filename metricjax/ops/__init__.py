"""Low-level array ops."""

from metricjax.ops.involution import involution
from metricjax.ops.involution import involution_reference
from metricjax.ops.pooling import max_pool_2x2
from metricjax.ops.similarity import cosine_similarity
from metricjax.ops.similarity import l2_normalize
from metricjax.ops.similarity import label_masks
from metricjax.ops.similarity import pairwise_distance
