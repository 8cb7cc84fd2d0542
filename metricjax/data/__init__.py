"""Datasets (IDX, image folder/zip, TFDS, Karpathy captions), the batch
samplers (one definition for both placements), augmentation."""

from metricjax.data.augment import random_crop_flip
from metricjax.data.captions import CaptionSplit
from metricjax.data.captions import load_captions
from metricjax.data.dataset import ArrayDataset
from metricjax.data.dataset import Dataset
from metricjax.data.dataset import LabelledSplit
from metricjax.data.dataset import hold_out
from metricjax.data.dataset import hold_out_classes
from metricjax.data.dataset import imbalanced
from metricjax.data.dataset import query_gallery
from metricjax.data.idx import read_idx
from metricjax.data.samplers import batch_keys
from metricjax.data.samplers import check_batch_shape
from metricjax.data.samplers import class_balanced_batch
from metricjax.data.samplers import ClassIndex
from metricjax.data.samplers import HostSampler
from metricjax.data.samplers import loss_key
from metricjax.data.samplers import make_index_sampler
from metricjax.data.samplers import random_triplets
from metricjax.data.samplers import step_key
from metricjax.data.samplers import uniform_batch
from metricjax.data.sources import convention
from metricjax.data.sources import load_dataset
