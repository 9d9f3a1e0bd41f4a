"""Whether this process is one worker of a distributed launch, decided in one place from the whole environment.

    launch = launch_environment()       # None: one process; else Launch(rank, world_size, local_rank)
    is_main_process()                   # rank 0, or not launched at all

``torchrun`` (and ``accelerate launch``, which runs it) starts every worker with the full set:
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. dsee believes it is a
worker only when all of them are there and agree (0 ≤ RANK < WORLD_SIZE). ``RANK`` alone proves
nothing: a variable left in a shell, or set by an unrelated tool, once made a single process skip the
run lock and the summary (a second such process then wrote the same run). A partial environment that
names a worker other than the first is refused with a message; ``RANK=0`` or ``WORLD_SIZE=1`` alone
is one process, as it would be without them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(ValueError):
    """The environment names a distributed worker, but not the way a launcher does."""


@dataclass(frozen=True)
class Launch:
    rank: int
    world_size: int
    local_rank: int


def _integer(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer; it is set by a launcher such as torchrun: unset it, "
                          "or start the processes with torchrun") from None


def launch_environment(env: Mapping[str, str] | None = None) -> Launch | None:
    """This process's place in a distributed launch (module doc); None for a single process.

    Raises ``LaunchError`` for a partial or inconsistent launcher environment that names a worker
    other than rank 0 of one process.
    """
    env = os.environ if env is None else env
    rank, world, local = (_integer(env, name) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    present = [name for name in LAUNCH_VARIABLES if env.get(name, "").strip()]
    if not present:
        return None
    complete = len(present) == len(LAUNCH_VARIABLES)
    if complete and world is not None and world > 1:
        if not 0 <= rank < world or local is None or local < 0:
            raise LaunchError(f"RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world} do not fit together (need "
                              "0 <= RANK < WORLD_SIZE): start the processes with torchrun")
        return Launch(rank, world, local)
    if (rank in (None, 0)) and (world in (None, 1)):
        return None  # one process, whatever else is set
    missing = [name for name in LAUNCH_VARIABLES if name not in present]
    shown = ", ".join(f"{name}={env[name]}" for name in present)
    absent = f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not" if missing else \
        "WORLD_SIZE is not above 1"
    raise LaunchError(f"{shown} is set, but {absent}: that is not a launch by torchrun or accelerate launch, which "
                      "set all of "
                      f"{', '.join(LAUNCH_VARIABLES)}; unset {', '.join(present)} to run one process, or start the "
                      "processes with torchrun")


def world_size(env: Mapping[str, str] | None = None) -> int:
    launch = launch_environment(env)
    return 1 if launch is None else launch.world_size


def is_main_process(env: Mapping[str, str] | None = None) -> bool:
    """True for a single process and for rank 0 of a launch: the process that writes the run and prints."""
    launch = launch_environment(env)
    return launch is None or launch.rank == 0
