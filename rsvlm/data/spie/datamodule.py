"""SPIE batches for training, validation, test and prediction: :class:`SpieDataModule`.

Batches follow the contract of :mod:`rsvlm.data.base` (``image`` B×C×H×W with H = W =
``image_size``, ``mask`` and ``valid`` B×1×H×W, the texts, ``meta``, and the text formatter's
tensors once one is set). Samples come from :class:`rsvlm.data.spie.dataset.SpieDataset`.

Predict batches (``predict_paths``) hold ``image``, ``valid`` and ``meta`` (path, crs,
transform, sizes, pad) and, when ``categories`` is given, one sample per image and category
with ``category``, the APG ``instruction`` and an empty ``response`` (plus formatter keys).

Instructions: the ``spectral`` template uses each record's stored instruction, unless the
records' ``build.json`` says they were built with another APG style than ``apg_style``, in
which case the spectral prompt is recomputed from the image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from rsvlm.data.bands import BandError, band_spec
from rsvlm.data.base import SPLITS, RsvlmDataModule, canonical_split
from rsvlm.data.generated import GeneratedData
from rsvlm.data.indices import normalize_category
from rsvlm.data.prompted import PromptedSamples, PromptSampling
from rsvlm.data.recent import check_memory_size
from rsvlm.data.spie.dataset import SpieCollate, SpieDataset
from rsvlm.data.spie.records import RecordError, SpieRecord, read_records, select_datasets
from rsvlm.data.stats import load_stats, mean_std
from rsvlm.data.tiling import check_flips
from rsvlm.data.transforms import Normalization, check_index_channels, check_normalization, check_threshold_jitter
from rsvlm.io.recipe_errors import RecipeError


class SpieDataModule(RsvlmDataModule):
    """SPIE batches for training, validation, test and prediction.

    Args:
        records: a SPIE records file (``rsvlm data build-spie``); its ``split`` field selects
            train / val / test records.
        stats: the band statistics file (``rsvlm data stats``); default ``stats.json`` beside
            ``records`` (or the generated build's). Missing statistics are an error. With
            ``predict_paths`` and no records, only this is needed.
        generate: build generated data in ``prepare_data`` when ``records`` is None.
        image_size: output side; images are resized keeping the aspect ratio and padded.
        bands: bands fed to the model (preset name or list), selected by name from records.
        categories: keep only these categories (e.g. ``[water]`` for a per-category stage).
        datasets: keep only the records of these source datasets (field ``dataset`` of the
            records, e.g. ``[segmunich]``), in every split; None keeps all. The SPEX paper
            trains stage 2 and tests on each SPIE subset separately (its Tables II–VI), which
            is one run per dataset (a sweep axis over this argument). A name absent from the
            records file, or nothing left after ``datasets`` and ``categories``, is an error.
        batch_size, num_workers, pin_memory: DataLoader settings (pinned memory only with CUDA;
            persistent workers when ``num_workers > 0``).
        augment: random flips/rot90 on training samples. Off by default: a flip moves the
            regions but not the words, so the spectral prompt's and the response's locations
            ("top-left", centroids, boxes) would contradict the flipped image. Turn it on only
            for text without locations (e.g. ``template: plain`` with location-free responses).
        template: ``spectral`` (instruction with APG prompt) or ``plain`` (ablation).
        apg_style: ``paper`` or ``released`` APG format.
        predict_paths: GeoTIFFs for ``predict_dataloader``, of any size: cut into
            ``image_size`` tiles overlapping by ``predict_overlap`` pixels (see
            :class:`rsvlm.data.spie.predict_dataset.TiledPredictDataset`; :class:`rsvlm.inference.writer.PredictionWriter`
            stitches them back).
        predict_overlap: pixels shared by neighbouring prediction tiles.
        predict_statistics: ``"tile"`` (default) or ``"scene"``: whether a prediction tile is
            normalised (``image`` / ``robust_image``) and APG-prompted by its own statistics or by
            its whole scene's. Take the one that matches the training records: ``tile`` for
            records cut from larger scenes (a SPIE build), ``scene`` when every record is a whole
            scene (the generated demos), so a tile of a large image sees what the scene says.
        predict_flips: test-time flips of each prediction tile (``none``, ``horizontal``,
            ``vertical``, ``both``; ``none`` among them, default only it): the tile is predicted
            once per flip, each pass from the mirrored tile with its own APG prompt, and the
            mirrored-back logits are averaged (``rsvlm predict``, ``rsvlm evaluate`` and
            :class:`rsvlm.inference.api.Predictor`); the texts kept are the unflipped pass's.
            Costs one pass per flip.
        predict_bands: the bands of the ``predict_paths`` files, in file order (a preset such as
            ``sentinel2`` or ``naip``, or a list), when they are not the model's ``bands`` in its
            order: the model's are read from them by name. Default: a file's band descriptions
            when they are band names, else the file must hold exactly ``bands``, in order.
        seed: shuffling and augmentation seed.
        normalization: ``dataset`` (default: the band statistics ``stats``), ``image`` (each
            image's own per-band mean/std) or ``robust_image`` (each image's per-band median
            and IQR/1.349), over valid pixels; the same for train, val, test and predict
            (see :mod:`rsvlm.data.transforms`). The per-image options make the model
            independent of the sensor's gain and offset.
        index_channels: spectral indices (``ndvi``, ``ndwi``, ``ndbi``) appended to the
            normalised bands as channels, computed from the bands before normalisation (they
            keep the spectral shape that per-image normalisation removes), and coarse masks
            (``ndvi_otsu``, ``ndwi_otsu``, ``ndbi_otsu``: 1 where the index exceeds Otsu's threshold
            of the whole image, SPEX's APG prior as a map; a predicted scene's tiles share its
            threshold) or margins (``ndwi_margin``: the index minus that threshold); the encoder
            then takes ``len(bands) + len(index_channels)`` channels.
        prompts: make a share of the train / val / test samples prompted extraction (the one
            region a point, box or scribble marks; :mod:`rsvlm.data.prompted`); every sample
            then carries ``visual_prompts`` and ``task``.
        cache_images: each split keeps the checked image, mask and instruction of the last this
            many records in memory (:class:`~rsvlm.data.recent.RecentlyRead`), for small data read
            many times (the generated demo: decoding the files was ~10 % of a training step on
            2 cores); 0 reads the files for every sample. Each DataLoader worker keeps its own.
        threshold_jitter: training samples' coarse masks and margins are cut at Otsu's threshold
            moved by a uniform draw in ``±threshold_jitter`` index units (per sample, index and
            epoch; :class:`~rsvlm.data.spie.dataset.SpieDataset`), a noisy prior to learn from; 0 (the
            default) keeps Otsu's cut. Validation, test and prediction always use the cut itself.
    """

    def __init__(
        self,
        records: str | None = None,
        stats: str | None = None,
        generate: GeneratedData | None = None,
        image_size: int = 512,
        bands: list[str] | str = "demo",
        categories: list[str] | None = None,
        batch_size: int = 2,
        num_workers: int = 0,
        pin_memory: bool = True,
        augment: bool = False,
        template: Literal["spectral", "plain"] = "spectral",
        apg_style: Literal["paper", "released"] = "paper",
        predict_paths: list[str] | None = None,
        seed: int = 0,
        predict_overlap: int = 64,
        datasets: list[str] | None = None,
        normalization: Normalization = "dataset",
        index_channels: list[str] | None = None,
        predict_statistics: Literal["tile", "scene"] = "tile",
        predict_flips: list[str] | None = None,
        predict_bands: list[str] | str | None = None,
        prompts: PromptSampling | None = None,
        cache_images: int = 0,
        threshold_jitter: float = 0.0,
    ) -> None:
        super().__init__(bands=bands, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, seed=seed)
        if records is None and generate is None and stats is None:
            raise ValueError(
                "SpieDataModule: give records= (a SPIE records file made by "
                "`rsvlm data build-spie`) or generate= (generated demo data); "
                "prediction alone needs only stats= and predict_paths="
            )
        if template not in ("spectral", "plain"):
            raise ValueError(f"SpieDataModule.template must be 'spectral' or 'plain', got {template!r}")
        if apg_style not in ("paper", "released"):
            raise ValueError(f"SpieDataModule.apg_style must be 'paper' or 'released', got {apg_style!r}")
        self.records = records
        self.stats = stats
        self.generate = generate
        self.image_size = image_size
        self.bands = bands
        self.categories = None if categories is None else [normalize_category(c) for c in categories]
        self.subsets = None if datasets is None else list(datasets)
        self.augment = augment
        self.template = template
        self.apg_style = apg_style
        self.predict_paths = predict_paths
        self.predict_overlap = predict_overlap
        self.normalization = check_normalization(normalization, "SpieDataModule.normalization")
        self.index_channels = check_index_channels(index_channels or ())
        if predict_statistics not in ("tile", "scene"):
            raise ValueError(
                f"SpieDataModule.predict_statistics: must be 'tile' or 'scene', got {predict_statistics!r}"
            )
        self.predict_statistics = predict_statistics
        self.predict_flips = check_flips(predict_flips or ("none",), "SpieDataModule.predict_flips")
        try:
            self.predict_bands = None if predict_bands is None else band_spec(predict_bands)
        except (BandError, ValueError) as err:
            raise ValueError(f"SpieDataModule.predict_bands: {err}") from None
        self.prompts = prompts
        self.cache_images = check_memory_size(cache_images, "SpieDataModule.cache_images")
        self.threshold_jitter = check_threshold_jitter(threshold_jitter, "SpieDataModule.threshold_jitter")
        self._mean = None
        self._std = None

    def collate_fn(self) -> SpieCollate:
        return SpieCollate(self._formatter)

    # ------------------------------------------------------------------ generated data
    def generated_dir(self) -> Path:
        """Folder of the generated build for these parameters (keyed by their hash)."""
        assert self.generate is not None
        return self.generate.folder(self._spec, self.apg_style)

    def prepare_data(self) -> None:
        """Write generated scenes, build their SPIE records and statistics (once per parameters)."""
        if self.records is not None or self.generate is None:
            return
        self.generate.prepare(self._spec, self.apg_style)

    def _paths(self) -> tuple[Path | None, Path]:
        if self.records is None and self.generate is None:
            return None, Path(self.stats).expanduser()  # type: ignore[arg-type]
        if self.records is not None:
            records = Path(self.records).expanduser()
        else:
            assert self.generate is not None
            if not self.generate.is_prepared(self._spec, self.apg_style):
                self.prepare_data()
            records = self.generate.records_path(self._spec, self.apg_style)
        stats = Path(self.stats).expanduser() if self.stats else records.parent / "stats.json"
        return records, stats

    def band_statistics(self):
        """``(mean, std)``, ``(C,)`` each in the order of ``bands``, from the statistics file
        (generated data is prepared first when needed)."""
        records_path, stats_path = self._paths()
        return mean_std(load_stats(stats_path, records=records_path), self._spec, where=str(stats_path))

    # ------------------------------------------------------------------ setup
    def _recompute_prompt(self, records_path: Path) -> bool:
        build = records_path.parent / "build.json"
        if self.template != "spectral" or not build.exists():
            return False
        try:
            style = json.loads(build.read_text()).get("style")
        except json.JSONDecodeError:
            return False
        return style is not None and style != self.apg_style

    def setup(self, stage: str | None = None) -> None:
        records_path, stats_path = self._paths()
        stats = load_stats(stats_path, records=records_path)
        self._mean, self._std = mean_std(stats, self._spec, where=str(stats_path))
        if stage == "predict":
            self._setup_predict()
            return
        if records_path is None:
            raise ValueError(f"SpieDataModule: stage {stage!r} needs records= or generate=")
        records = select_datasets(read_records(records_path), self.subsets, where=records_path)
        if self.categories is not None:
            records = [r for r in records if normalize_category(r.category) in self.categories]
            if not records:
                among = f" among datasets {self.subsets}" if self.subsets else ""
                raise RecordError(f"{records_path}: no records of categories {self.categories}{among}")
        recompute = self._recompute_prompt(records_path)
        by_split: dict[str, list[SpieRecord]] = {split: [] for split in SPLITS}
        for r in records:
            by_split.setdefault(canonical_split(r.split), []).append(r)
        for split in SPLITS:
            self.datasets[split] = SpieDataset(
                by_split[split],
                self._spec,
                self._mean,
                self._std,
                self.image_size,
                augment=self.augment and split == "train",
                template=self.template,
                apg_style=self.apg_style,
                recompute_prompt=recompute,
                seed=self.seed,
                normalization=self.normalization,
                index_channels=self.index_channels,
                cache_images=self.cache_images,
                threshold_jitter=self.threshold_jitter if split == "train" else 0.0,
            )
            if self.prompts is not None:
                self.datasets[split] = PromptedSamples(self.datasets[split], self.prompts)
        if stage in ("fit", None) and not by_split["train"]:
            raise ValueError(
                f"{records_path}: no training records"
                + (f" for categories {self.categories}" if self.categories else "")
            )

    def _setup_predict(self) -> None:
        if not self.predict_paths:
            raise RecipeError(
                "SpieDataModule.predict_paths: rsvlm predict needs the GeoTIFFs to predict on "
                "(--data.init_args.predict_paths='[scene.tif]')"
            )
        from rsvlm.data.spie.predict_dataset import TiledPredictDataset

        self.datasets["predict"] = TiledPredictDataset(
            self.predict_paths,
            list(self._spec.names),
            self._mean,
            self._std,
            tile=self.image_size,
            # A tile never overlaps its neighbour by half or more of itself.
            overlap=min(self.predict_overlap, self.image_size // 2),
            categories=self.categories,
            template=self.template,
            apg_style=self.apg_style,
            normalization=self.normalization,
            index_channels=self.index_channels,
            statistics=self.predict_statistics,
            flips=self.predict_flips,
            file_bands=self.predict_bands,
        )
