"""Each env's next episode drawn ahead of its reset, in batches (used by the batched env).

Envs of a batched env end at different steps (ruin ends an episode early), so most resets are of one
or two envs. Drawing a market path, its features and protocol series costs a fixed ~2-3 ms per call plus a little per
path, so one-env resets cost several times a path drawn in a batch. Since env ``i``'s next path seed
is simply the next draw of env ``i``'s own generator, the next episodes of all envs can be drawn
together, in one call, before they are needed: whenever a reset finds an env without a drawn episode,
the next episode of every env that lacks one is drawn in one batch. Every env gets exactly the
seed sequence (hence the paths) it would get resetting alone (:meth:`PortfolioSimulator.sample_episodes`
draws path ``k`` from ``seeds[k]`` alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from defialloc.envs.simulator import PortfolioSimulator
from defialloc.envs.step_records import DrawnEpisodes


@dataclass
class EpisodeGroup:
    """Envs ``envs`` ``(K,)`` starting the episodes ``drawn`` from path seeds ``seeds``."""

    envs: np.ndarray
    seeds: np.ndarray
    drawn: DrawnEpisodes


@dataclass
class _Batch:
    seeds: np.ndarray
    drawn: DrawnEpisodes
    unused: int


class EpisodePrefetch:
    """The drawn-but-unused next episode of each of ``sim.n_envs`` envs.

    Args:
        sim: the batched simulator whose :meth:`~PortfolioSimulator.sample_episodes` draws episodes.
        draw_seeds: ``envs (K,) -> seeds (K,)``, the next path seed of each env from its own generator.
    """

    def __init__(
        self, sim: PortfolioSimulator, draw_seeds: Callable[[np.ndarray], np.ndarray]
    ) -> None:
        self._sim = sim
        self._draw_seeds = draw_seeds
        self._batches: dict[int, _Batch] = {}
        self._counter = 0
        # env -> (batch id, position in the batch) of its next episode; -1 when not drawn yet
        self._slot = np.full((sim.n_envs, 2), -1, dtype=np.int64)

    def clear(self) -> None:
        """Forget every drawn episode (after the envs' generators were re-seeded)."""
        self._batches.clear()
        self._slot[:] = -1

    def pop(self, envs: np.ndarray) -> list[EpisodeGroup]:
        """The next episode of each env in ``envs`` (distinct), grouped by the batch it was drawn in."""
        envs = np.asarray(envs, dtype=np.int64)
        if (self._slot[envs, 0] < 0).any():
            self._draw_missing()
        groups = []
        batch_of = self._slot[envs, 0]
        for batch_id in np.unique(batch_of):
            rows = envs[batch_of == batch_id]
            position = self._slot[rows, 1]
            batch = self._batches[int(batch_id)]
            whole = (
                position.size == batch.seeds.size and (position == np.arange(position.size)).all()
            )
            # a whole batch in draw order (e.g. every env resetting at once) needs no gathered copy
            drawn = batch.drawn if whole else batch.drawn.take(position)
            groups.append(EpisodeGroup(rows, batch.seeds[position], drawn))
            batch.unused -= rows.size
            if batch.unused == 0:  # free the batch's arrays
                del self._batches[int(batch_id)]
        self._slot[envs] = -1
        return groups

    def _draw_missing(self) -> None:
        missing = np.flatnonzero(self._slot[:, 0] < 0)
        seeds = self._draw_seeds(missing)
        batch_id = self._counter
        self._counter += 1
        self._batches[batch_id] = _Batch(seeds, self._sim.sample_episodes(seeds), missing.size)
        self._slot[missing, 0] = batch_id
        self._slot[missing, 1] = np.arange(missing.size)
