"""Every loss of pytorch-metric-learning 2.9 has its metricjax name, which
losses.build knows (the parity tests of each are in this directory)."""

import inspect

import pytest

from metricjax import losses

# PML's class -> metricjax's name (the snake case of the class without
# `Loss`, as the field writes it: NTXent -> ntxent).
NAMES = {
    "AngularLoss": "angular", "ArcFaceLoss": "arcface",
    "CircleLoss": "circle", "ContrastiveLoss": "contrastive",
    "CosFaceLoss": "cosface", "DynamicSoftMarginLoss": "dynamic_soft_margin",
    "FastAPLoss": "fastap",
    "GeneralizedLiftedStructureLoss": "generalized_lifted_structure",
    "HistogramLoss": "histogram", "InstanceLoss": "instance",
    "IntraPairVarianceLoss": "intra_pair_variance",
    "LargeMarginSoftmaxLoss": "large_margin_softmax",
    "LiftedStructureLoss": "lifted_structure", "ManifoldLoss": "manifold",
    "MarginLoss": "margin", "MultiSimilarityLoss": "multi_similarity",
    "NCALoss": "nca", "NPairsLoss": "npairs", "NTXentLoss": "ntxent",
    "NormalizedSoftmaxLoss": "normalized_softmax", "P2SGradLoss": "p2sgrad",
    "PNPLoss": "pnp", "ProxyAnchorLoss": "proxy_anchor",
    "ProxyNCALoss": "proxy_nca", "RankedListLoss": "ranked_list",
    "SignalToNoiseRatioContrastiveLoss": "signal_to_noise_ratio_contrastive",
    "SmoothAPLoss": "smooth_ap", "SoftTripleLoss": "soft_triple",
    "SphereFaceLoss": "sphereface", "SubCenterArcFaceLoss": "subcenter_arcface",
    "SupConLoss": "supcon",
    "ThresholdConsistentMarginLoss": "threshold_consistent_margin",
    "TripletMarginLoss": "triplet_margin", "TupletMarginLoss": "tuplet_margin",
    "VICRegLoss": "vicreg",
    # Wrappers: SelfSupervisedLoss a loss, CrossBatchMemory and
    # MultipleLosses config.loss.memory_size and config.loss.extra.
    "SelfSupervisedLoss": "self_supervised",
}
WRAPPERS = ("CrossBatchMemory", "MultipleLosses")
BASES = ("BaseLossWrapper", "BaseMetricLossFunction", "GenericPairLoss",
         "EmbeddingRegularizerMixin", "WeightRegularizerMixin")


def test_every_pml_loss_has_a_name():
  pytest.importorskip("torch")
  pml = pytest.importorskip("pytorch_metric_learning")
  # pylint: disable-next=g-import-not-at-top
  from pytorch_metric_learning import losses as pml_losses
  if pml.__version__ != "2.9.0":
    pytest.skip(f"the list is PML 2.9's; this is {pml.__version__}")
  classes = {n for n, c in vars(pml_losses).items() if inspect.isclass(c)}
  assert classes - set(BASES) - set(WRAPPERS) == set(NAMES)


@pytest.mark.parametrize("name", sorted(NAMES.values()))
def test_build_knows_every_name(name):
  losses.get_loss(name)
  losses.build(name)
