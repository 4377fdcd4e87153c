"""The inference queue: bounded admission of uploaded files and one worker thread that
predicts them in batches (see the package docstring for the design).

Free of the web framework: it raises its own :class:`QueueUnavailableError`, which the API
maps to 503 with Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mri_tumor.data.reading import Frame
from mri_tumor.inference import ERROR, Prediction, Predictor

logger = logging.getLogger(__name__)


class QueueUnavailableError(Exception):
    """The queue cannot take a request now; retrying shortly may work."""


class QueueFullError(QueueUnavailableError):
    """Every slot is taken by files waiting or being predicted."""

    def __init__(self) -> None:
        super().__init__("The server is busy (its queue of images is full); retry shortly.")


class QueueClosedError(QueueUnavailableError):
    """The queue is stopping (the server is shutting down)."""

    def __init__(self) -> None:
        super().__init__("The server is shutting down; retry shortly.")


# What a request may ask of each decoded frame besides its result (a Grad-CAM overlay, say):
# called in the worker thread with the frame and its result.
Explain = Callable[[Frame, Prediction], Any]


@dataclass
class _Job:
    """One request's files, waiting for the worker thread."""

    files: list[tuple[str, bytes]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[tuple[Prediction, Any]]]
    slots: int
    explain: Explain | None = None


class InferenceQueue:
    """A bounded queue of uploaded files and one worker thread that predicts them in batches
    with one model (the server has one queue per loaded model).

    ``capacity`` counts files (waiting or being predicted) over all requests; requests
    reserve their slots before they are queued and the worker frees them when done.
    """

    def __init__(self, predictor: Predictor, capacity: int, max_batch: int) -> None:
        self.predictor = predictor
        self.capacity = capacity
        self.max_batch = max_batch
        self._reserved = 0
        self._jobs: deque[_Job] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mri-tumor-inference",
                                        daemon=True)

    @property
    def reserved(self) -> int:
        """Files currently admitted (waiting or being predicted)."""
        return self._reserved

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Let the worker finish what is queued, then stop it."""
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def reserve(self, count: int) -> None:
        """Reserve room for ``count`` files; QueueFullError or QueueClosedError if none."""
        with self._lock:
            if self._stopping:
                raise QueueClosedError
            if self._reserved + count > self.capacity:
                raise QueueFullError
            self._reserved += count

    def release(self, count: int) -> None:
        """Give back slots reserved by a request that was not queued after all."""
        with self._lock:
            self._reserved = max(0, self._reserved - count)

    async def predict(self, files: list[tuple[str, bytes]], slots: int) -> list[Prediction]:
        """Queue ``(name, bytes)`` files (their ``slots`` already reserved) and await the
        results: one per file, or one per frame of a multi-frame DICOM file, in order.

        The slots belong to the queue from here on; the worker frees them.
        """
        return [result for result, _ in await self.predict_explained(files, slots)]

    async def predict_explained(self, files: list[tuple[str, bytes]], slots: int,
                                explain: Explain | None = None
                                ) -> list[tuple[Prediction, Any]]:
        """As :meth:`predict`, each result paired with ``explain(frame, result)``, computed
        in the worker thread (None for results of inputs that gave no frame, and without
        ``explain``)."""
        loop = asyncio.get_running_loop()
        job = _Job(files, loop, loop.create_future(), slots, explain)
        with self._wakeup:
            if self._stopping:  # the worker may be gone: nobody would answer
                self._reserved = max(0, self._reserved - slots)
                raise QueueClosedError
            self._jobs.append(job)
            self._wakeup.notify()
        return await job.future

    # -- worker thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._jobs and not self._stopping:
                    self._wakeup.wait()
                if not self._jobs:
                    return
                batch = [self._jobs.popleft()]
                count = len(batch[0].files)
                while self._jobs and count + len(self._jobs[0].files) <= self.max_batch:
                    count += len(self._jobs[0].files)
                    batch.append(self._jobs.popleft())
            try:
                self._process(batch)
            except BaseException as error:  # never let the worker die; fail just this batch
                logger.error("inference batch failed: %s\n%s", type(error).__name__,
                             "".join(traceback.format_tb(error.__traceback__)))
                for job in batch:
                    _resolve(job, error=RuntimeError("inference failed"))
            finally:
                for job in batch:
                    job.files = []  # drop the upload bytes now, not when the request ends
                    self.release(job.slots)

    def _process(self, batch: list[_Job]) -> None:
        jobs = [job for job in batch if not job.future.cancelled()]  # skip clients gone away
        # Every job's files decoded (a DICOM series' files become one scan), then predicted
        # together in batches of max_batch frames.
        items = [self.predictor.decode_all([data for _, data in job.files],
                                           [name for name, _ in job.files]) for job in jobs]
        results = iter(self.predictor.predict_items([i for per_job in items for i in per_job],
                                                    self.max_batch, self._predict))
        for job, per_job in zip(jobs, items, strict=True):
            answers = [(result, None) for result in (next(results) for _ in per_job)]
            if job.explain is not None and not job.future.cancelled():
                answers = [(result, job.explain(item, result) if isinstance(item, Frame)
                            else None) for item, (result, _) in zip(per_job, answers,
                                                                    strict=True)]
            if not job.future.cancelled():
                _resolve(job, answers)

    def _predict(self, frames: Sequence[Any]) -> list[Prediction]:
        try:
            return self.predictor.predict_frames(frames)
        except Exception as error:
            if len(frames) == 1:
                logger.warning("prediction failed for one image: %s", type(error).__name__)
                return [self._stamped(Prediction(
                    frames[0].name, ERROR,
                    message=f"{frames[0].name}: this image could not be analysed"))]
        # One bad frame must not fail the others: retry one by one.
        return [p for frame in frames for p in self._predict([frame])]

    def _stamped(self, prediction: Prediction) -> Prediction:
        """``prediction`` naming this queue's model (every result says which model it is
        from, also when no model ran)."""
        if prediction.model is None:
            prediction.model = getattr(self.predictor, "name", None)
        return prediction


def _resolve(job: _Job, results: list[tuple[Prediction, Any]] | None = None,
             error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(results or [])

    with contextlib.suppress(RuntimeError):  # the event loop has closed (shutting down)
        job.loop.call_soon_threadsafe(settle)
