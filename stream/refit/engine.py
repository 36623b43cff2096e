"""Where a refit reads its examples: the engine seam between this process (``local``) and Spark executors.

An engine turns a window of the archive into the train and holdout splits and the grown vocabulary
(:class:`RefitInputs`); the fits, the gate and publishing after it are one implementation
(:class:`~stream.refit.job.GlobalRefit`), whichever engine read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass

from stream.archive.files import ArchiveFiles
from stream.codec.labeled_example import LabeledColumns
from stream.config import Settings
from stream.model.losses import get_loss
from stream.progress import Progress
from stream.refit.examples import ExampleSplit
from stream.refit.spill import SpillDirectory
from stream.refit.vocabulary import Growth, VocabularyCounter, growable_coordinates
from stream.refit.window import RefitWindow, split_records
from stream.tables.models import CoefficientTable, GlobalModel
from stream.tables.stored_table import StoredCoefficientTable

READ_BATCH = 20_000


@dataclass(frozen=True)
class RefitInputs:
    """What a refit starts from: the current global model and the window's spilled splits."""

    model: GlobalModel
    window: RefitWindow
    train: ExampleSplit
    holdout: ExampleSplit
    dropped: int
    growth: Growth


class RefitEngine(ABC):
    """Where a refit's examples are read and its sums are computed: the one seam between ``local`` and ``spark``.

    An engine turns a window of the archive into the train and holdout splits
    (:class:`~stream.refit.examples.ExampleSplit`) and the grown vocabulary; everything
    after (the fits, the gate, publishing) is the same code for every engine.
    """

    @abstractmethod
    def read(
        self,
        scope: ExitStack,
        window: RefitWindow,
        model: GlobalModel,
        tables: Mapping[str, CoefficientTable | StoredCoefficientTable],
    ) -> RefitInputs:
        """``window``'s examples as splits in the columns of the grown index; what they hold lives until ``scope`` closes."""


class LocalEngine(RefitEngine):
    """This process streams the archive into chunks spilled to a temporary directory (:mod:`stream.refit.spill`)."""

    def __init__(self, settings: Settings, show_progress: bool = False) -> None:
        self.settings = settings
        self.archive = ArchiveFiles(settings.archive_path)
        self.loss = get_loss(settings.model.loss)
        self._show_progress = show_progress

    def _batches(self, window: RefitWindow) -> Iterator[LabeledColumns]:
        progress = Progress("refit: reading the archive", unit="examples") if self._show_progress else None
        files = self.archive.files_between(window.start_ms, window.end_ms)
        for batch in self.archive.scanned(files, READ_BATCH):
            yield batch
            if progress is not None:
                progress.advance(len(batch))
        if progress is not None:
            progress.finish()

    def read(
        self,
        scope: ExitStack,
        window: RefitWindow,
        model: GlobalModel,
        tables: Mapping[str, CoefficientTable | StoredCoefficientTable],
    ) -> RefitInputs:
        """The splits spilled to disk as the archive streams by; the vocabulary grows in the same read."""
        refit = self.settings.refit
        spill = scope.enter_context(SpillDirectory())
        dim = model.global_index.dim
        train = spill.split("train", dim, refit.chunk_rows)
        holdout = spill.split("holdout", dim, refit.chunk_rows)
        vocabulary = VocabularyCounter(model, growable_vocabulary(self.settings))
        dropped = 0
        for examples in self._batches(window):
            train_rows, holdout_rows, lost = split_records(
                examples, model, tables, window, refit, self.loss, vocabulary
            )
            train.add(*train_rows)
            holdout.add(*holdout_rows)
            dropped += lost
        train.flush()
        holdout.flush()
        growth = vocabulary.grow(refit.vocabulary_min_count)
        for split in (train, holdout):
            split.move_columns(dim, growth.provisional_columns, growth.model.global_index.dim)
        return RefitInputs(growth.model, window, train, holdout, dropped, growth)


def growable_vocabulary(settings: Settings) -> list[str]:
    """The coordinates whose index this refit grows (none without ``refit.grow_vocabulary``)."""
    if not settings.refit.grow_vocabulary:
        return []
    return growable_coordinates(settings.model, settings.refit.grow_global_vocabulary)
