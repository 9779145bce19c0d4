"""A reservoir replay buffer with a fixed budget of examples, stored as real tensors."""

from __future__ import annotations

import torch

__all__ = ["ReservoirBuffer"]


class ReservoirBuffer:
    """At most ``capacity`` examples, a uniform sample of every example offered so far.

    Reservoir sampling (Vitter's algorithm R): the ``n``-th example offered (0-indexed) is
    stored while there is room, else it replaces slot ``j`` for ``j`` uniform in ``0..n`` when
    ``j < capacity``. After ``N`` offers every one of them is in the buffer with probability
    ``capacity / N``, whatever the order of the stream. The storage (inputs, int64 labels,
    optional float32 logits) is allocated at full capacity on the first offer, so
    :meth:`nbytes` is what the budget really costs from then on.
    """

    def __init__(self, capacity: int, logits: bool, generator: torch.Generator) -> None:
        if capacity < 1:
            raise ValueError(f"a replay buffer needs room for at least one example, not {capacity}")
        self.capacity = capacity
        self.keeps_logits = logits
        self.generator = generator
        #: How many examples were offered.
        self.seen = 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None

    @property
    def size(self) -> int:
        """How many slots hold an example."""
        return min(self.seen, self.capacity)

    def _allocate(self, x: torch.Tensor, logits: torch.Tensor | None) -> None:
        self.x = torch.zeros((self.capacity, *x.shape[1:]), dtype=x.dtype, device=x.device)
        self.y = torch.zeros(self.capacity, dtype=torch.long, device=x.device)
        if self.keeps_logits:
            if logits is None:
                raise ValueError("this buffer keeps logits: pass them with the examples")
            self.logits = torch.zeros(
                (self.capacity, logits.shape[1]), dtype=torch.float32, device=x.device
            )

    def add(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None) -> None:
        """Offer a batch of examples, one at a time in order."""
        if self.x is None:
            self._allocate(x, logits)
        for i in range(len(y)):
            if self.seen < self.capacity:
                slot = self.seen
            else:
                slot = int(torch.randint(0, self.seen + 1, (1,), generator=self.generator))
            self.seen += 1
            if slot >= self.capacity:
                continue
            self.x[slot] = x[i].detach()
            self.y[slot] = y[i]
            if self.logits is not None:
                self.logits[slot] = logits[i].detach().float()

    def sample(self, n: int, below: int | None = None, balanced: bool = False) -> torch.Tensor:
        """Slots of up to ``n`` stored examples (labels ``< below`` only, when given).

        Uniform: ``n`` distinct slots (all eligible ones when fewer). ``balanced``: a class
        uniformly among the eligible classes, then a slot uniformly within it, ``n`` times
        (with replacement), so rare classes are replayed as often as common ones.
        """
        if self.y is None:
            return torch.zeros(0, dtype=torch.long)
        labels = self.y[: self.size]
        eligible = torch.arange(self.size, device=labels.device)
        if below is not None:
            eligible = eligible[labels < below]
        if len(eligible) == 0:
            return eligible
        if not balanced:
            order = torch.randperm(len(eligible), generator=self.generator)[:n]
            return eligible[order.to(eligible.device)]
        classes = labels[eligible].unique()
        picks = torch.randint(0, len(classes), (n,), generator=self.generator)
        slots = []
        for c in classes[picks.to(classes.device)].tolist():
            members = eligible[labels[eligible] == c]
            pick = int(torch.randint(0, len(members), (1,), generator=self.generator))
            slots.append(members[pick])
        return torch.stack(slots)

    def nbytes(self) -> int:
        """Bytes of the stored tensors (inputs, labels and logits), allocated at capacity."""
        return sum(
            t.numel() * t.element_size() for t in (self.x, self.y, self.logits) if t is not None
        )
