"""Multi-class segmentation batches (MVPNet pre-training) from generated scenes or GeoTIFF folders.

Batch contract::

    image    B×C×H×W float32, normalised per band (0 = band mean); pixels that are nodata /
             NaN in some band, and padding, are 0; unlabelled pixels keep their values
    classes  B×H×W int64 class indices in [0, num_classes), 255 (:data:`IGNORE_INDEX`) where
             the pixel is invalid (nodata / NaN in any band, label "no data", unmapped label
             code, padding)
    valid    B×1×H×W bool, ``classes != 255``

Data:

* **generated** (``sources`` is None): ``n_train + n_val + n_test`` scenes of
  :func:`rsvlm.data.scenes.generate_scene` made in memory, scene ``i`` of split ``s`` from
  ``numpy.random.default_rng([seed, SPLIT_CODE[s], i])``; classes 0 bare soil, 1 vegetation,
  2 water, 3 building.
* **folders** (``sources``): each :class:`SegmentationSource` is a folder of image/label
  GeoTIFFs read with :func:`rsvlm.data.raster.read_raster` / :func:`~rsvlm.data.raster.read_mask`,
  the datamodule's bands picked **by name** from the source's bands, label codes turned into
  class indices by the source's ``label_map``. Several sources with different sensors and
  legends can feed one class list this way.

Normalisation: per-band mean and population standard deviation over the pixels of the
**train split** that are valid in every band (labelled or not) (:class:`rsvlm.data.stats.BandAccumulator`, float64), computed in
:meth:`SceneSegmentationDataModule.setup`; the same numbers normalise val and test, so no
statistic leaks from the evaluation splits. ``stats=`` names a ``stats.json``
(:mod:`rsvlm.data.stats` format): loaded when it exists, otherwise computed as above and
written there, so a large dataset is read for statistics once.

Augmentation (train only, ``augment``): a random left-right and a random up-down flip per
sample, drawn from a per-sample seed given by :class:`rsvlm.data.loaders.SeededSampler`
(reproducible for ``seed``, different every epoch, independent of the number of workers).
Rotations are left out so that non-square tiles keep their shape.
"""

from rsvlm.data.segmentation.datamodule import SPLIT_CODE, SceneSegmentationDataModule
from rsvlm.data.segmentation.dataset import SegmentationDataset, collate
from rsvlm.data.segmentation.sources import (
    IGNORE_INDEX,
    SegmentationDataError,
    SegmentationSource,
    discover,
    label_lut,
)

__all__ = [
    "IGNORE_INDEX",
    "SPLIT_CODE",
    "SceneSegmentationDataModule",
    "SegmentationDataError",
    "SegmentationDataset",
    "SegmentationSource",
    "collate",
    "discover",
    "label_lut",
]
