"""How many new jobs each cycle of a burst takes.

A cycle that took a whole burst of 1000 jobs kept the runners waiting for all of it:
some 3 s of intake on a 2-core machine before the first job ran.  Taken in slices, the
first slice is queued and running while the next is read, and the cycles that take the
later slices also collect what the first ones finished.  The first slice is small, so
the runners start within moments of the drop; each next one is larger, up to a size
whose intake (about a second here) is not much longer than the runners take to drain
the slice before: intake is slower than the runners, so they idle between slices, and
a slice of 750 left them idle for most of its 3 s.  Each slice pays one round trip to
the cluster, some 0.1-0.2 s of CPU there.

Each cycle also goes over every job held (its hold, its state on the cluster), so behind
a queue wait, where every job taken stays held, slices of a fixed size made a burst's
cost grow with its square: 20,000 jobs took 93 s, the last cycles 8 ms a job.  A slice is
therefore never smaller than a share of what is held (``HELD_PER_NEW``): that work is
then a constant share of each new job's, and a burst of N jobs takes some log(N) cycles
while nothing runs.  Where the runners keep up, few jobs are held and slices stay as
above.
"""
from __future__ import annotations

from dataclasses import dataclass

FIRST_SLICE = 50
GROWTH = 4
LARGEST_SLICE = 250
HELD_PER_NEW = 4            # a slice takes at least one new job for each this many held
MAX_GATHER_SECONDS = 0.5    # how long finished jobs may gather before the cycle that collects them
ONCE_GATHER_LIMIT_SECONDS = 30     # the most a ``once`` goes on collecting jobs that keep ending


@dataclass
class IntakeSlices:
    first: int = FIRST_SLICE
    largest: int = LARGEST_SLICE
    size: int = FIRST_SLICE

    def __post_init__(self) -> None:
        self.size = self.first

    def after(self, more_new: bool, held: int) -> None:
        """A burst goes on (more new jobs wait): the next slice is larger, and at least a
        share of the ``held`` jobs; over: start small again."""
        self.size = max(min(self.size * GROWTH, self.largest), held // HELD_PER_NEW) if more_new else self.first
