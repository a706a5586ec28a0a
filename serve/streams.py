"""The prior streams: the class prior of a model's recent traffic, estimated from the images themselves.

A request with ``target_prior: "estimated"`` is answered with the class prior of its stream's recent traffic, its
own images included. A stream (``prior_stream``, ``"default"`` when a request names none) is a ring of the
calibrated, source-relative posteriors (the softmax of the balanced logits) of its last ``window`` images; its
estimate is ``gcl_zoo.prior.estimate_prior`` over the ring (MAP EM toward the source prior, with the no-shift
test), at most ``STEPS_PER_REQUEST`` EM iterations from the stream's previous estimate, so that the estimate follows
the sliding window's MAP point at a bounded cost per request (``GET`` settles it to convergence).

Requests answered from one batch reach step 6 together: each adds its images, yields once to the event loop so
the others on its stream add theirs, and the first to go on estimates for all of them (an estimate is recomputed
only when images arrived after it). Everything here runs on the event loop, so no lock is needed.

A ``PUT`` prior stands for a full window of images: the ring is filled with one-hot pseudo-images in the prior's
proportions (rounded to whole images, largest remainders first), answered as the estimate exactly until traffic
arrives; new images then replace the pseudo-images one by one, oldest first, as they replace old images in any
full window, so after ``window`` new images the PUT prior has no weight left.

Streams are per model and capped (``max_streams``): a new stream beyond the cap drops the least recently used
one (its estimate is lost; ``dropped`` counts them). Memory: ``max_streams x window x classes x 8`` bytes per model
at most (64 x 1,024 x 100 x 8 = 52 MB).
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator

import torch

from gcl_zoo.prior import DEFAULT_STRENGTH, DEFAULT_TEST_LEVEL, PriorEstimate, check_prior, estimate_prior

__all__ = ["PriorStream", "PriorStreams", "DEFAULT_STREAM", "STREAM_NAME_PATTERN", "total_variation"]

DEFAULT_STREAM = "default"
TOLERANCE = 1e-6  # EM stops when no class's prior moves more (a hundredth of a percent of 1/100)
# EM iterations per request's estimate, from the stream's previous one: the estimate follows the window's MAP point
# across requests at a bounded cost (about 1 ms at 1,024 images and 100 classes); a GET runs it to convergence
STEPS_PER_REQUEST = 10
SETTLE_ITERATIONS = 1000
STREAM_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


def total_variation(prior: torch.Tensor, source: torch.Tensor) -> float:
    """Half the L1 distance between two class priors: the share of traffic whose class would have to change."""
    return 0.5 * float((prior.double() - source.double()).abs().sum())


class PriorStream:
    """One stream's window: the last ``window`` images' posteriors (a ring), the pseudo-images a PUT prior still
    holds, and the latest estimate with the image count it covers."""

    def __init__(self, window: int, source: torch.Tensor):
        self.rows = torch.zeros(window, source.numel(), dtype=torch.float64)
        self.filled = 0  # ring places holding an image (real or a PUT prior's)
        self.head = 0  # where the next image goes: the oldest place once the ring is full
        self.put_images = 0  # ring places a PUT prior still holds
        self.version = 0  # changes to the window, ever: an estimate is fresh when it covers them all
        self.estimate = PriorEstimate(source, 0, 0, True, 0.0, False)
        self.estimated_at = 0

    @property
    def window(self) -> int:
        return self.rows.shape[0]

    @property
    def images(self) -> int:
        """Images of traffic in the window (a PUT prior's pseudo-images not counted)."""
        return self.filled - self.put_images

    def add(self, probs: torch.Tensor) -> int:
        """Add posteriors (N x C), oldest first out once the ring is full; the window's version after them."""
        new = probs.shape[0]
        probs = probs[-self.window:]
        self.rows[(self.head + torch.arange(probs.shape[0])) % self.window] = probs
        self.head = (self.head + probs.shape[0]) % self.window
        self.put_images = max(0, self.put_images - new)  # a PUT fills the ring: its pseudo-images are the oldest
        self.filled = min(self.window, self.filled + new)
        self.version += new
        return self.version

    def set_prior(self, prior: torch.Tensor) -> None:
        """Fill the window with a full window of one-hot pseudo-images in ``prior``'s proportions."""
        exact = prior.double() * self.window
        counts = exact.floor().long()
        remainders = (exact - counts).argsort(descending=True)
        counts[remainders[:self.window - int(counts.sum())]] += 1
        labels = torch.repeat_interleave(torch.arange(prior.numel()), counts)
        self.rows.zero_()
        self.rows[torch.arange(self.window), labels] = 1.0
        self.filled, self.head, self.put_images = self.window, 0, self.window
        self.version += 1  # what the window holds changed: the estimate below covers it
        self.estimate = PriorEstimate(prior.double(), 0, 0, True, 0.0, True)
        self.estimated_at = self.version


class PriorStreams:
    """One model's streams, at most ``max_streams`` of ``window`` images each (least recently used dropped), and
    their estimates against the model's ``source`` prior (measured on ``source_images`` validation images)."""

    def __init__(self, window: int, max_streams: int, source: torch.Tensor, source_images: int | None = None,
                 strength: float = DEFAULT_STRENGTH, test_level: float | None = DEFAULT_TEST_LEVEL,
                 max_iter: int = STEPS_PER_REQUEST, tol: float = TOLERANCE):
        self.window = window
        self.max_streams = max_streams
        self.source = source.double()
        self.source_images = source_images
        self.strength = strength
        self.test_level = test_level
        self.max_iter, self.tol = max_iter, tol
        self.dropped = 0
        self._streams: OrderedDict[str, PriorStream] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def get(self, name: str) -> PriorStream | None:
        """The stream ``name``, or None when it was never used (or was dropped or deleted)."""
        return self._streams.get(name)

    def _open(self, name: str) -> PriorStream:
        """The stream ``name``, made (dropping the least recently used one at the cap) when new."""
        stream = self._streams.get(name)
        if stream is None:
            if len(self._streams) >= self.max_streams:
                self._streams.popitem(last=False)
                self.dropped += 1
            stream = self._streams[name] = PriorStream(self.window, self.source)
        self._streams.move_to_end(name)
        return stream

    def add(self, name: str, logits: torch.Tensor) -> tuple[PriorStream, int]:
        """Add the images of calibrated ``logits`` (one row each) to stream ``name``: the stream and the window
        version an estimate must cover to include them."""
        stream = self._open(name)
        return stream, stream.add(logits.double().softmax(dim=1))

    async def observe(self, name: str, logits: torch.Tensor) -> torch.Tensor:
        """Step 6 of an ``"estimated"`` request: its images join stream ``name``, and the answer's prior is the
        stream's estimate with them included (shared with the requests of the same batch on the stream)."""
        stream, version = self.add(name, logits)
        await asyncio.sleep(0)  # the batch's other requests on this stream add their images first
        return self.refresh(stream, version).prior

    def refresh(self, stream: PriorStream, version: int | None = None, settle: bool = False) -> PriorEstimate:
        """``stream``'s estimate, recomputed (``max_iter`` EM iterations from the previous one) when it predates
        window ``version`` (default: the current one); ``settle``: until EM converges."""
        stale = stream.estimated_at < (stream.version if version is None else version)
        if stale or (settle and not stream.estimate.converged):
            stream.estimated_at = stream.version
            start = stream.estimate.map_prior if stream.estimate.map_prior is not None else stream.estimate.prior
            stream.estimate = estimate_prior(stream.rows[:stream.filled], self.source, self.strength,
                                             self.test_level, self.source_images, tol=self.tol, start=start,
                                             max_iter=SETTLE_ITERATIONS if settle else self.max_iter)
        return stream.estimate

    def put(self, name: str, weights: torch.Tensor) -> PriorStream:
        """Set stream ``name``'s prior (made when new): ``weights`` checked (``PriorError``), a full window of
        pseudo-images."""
        prior = check_prior(weights, self.source.numel())
        stream = self._open(name)
        stream.set_prior(prior)
        return stream

    def delete(self, name: str) -> PriorStream | None:
        """Forget stream ``name``; the stream as it was, or None when there was none."""
        return self._streams.pop(name, None)

    def __iter__(self) -> Iterator[tuple[str, PriorStream]]:
        return iter(list(self._streams.items()))

    def gauges(self) -> dict[str, tuple[int, float]]:
        """Per stream: images of traffic in its window and its estimate's total variation from the source."""
        return {name: (stream.images, total_variation(self.refresh(stream).prior, self.source))
                for name, stream in self}
