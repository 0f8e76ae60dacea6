"""Non-stationary MuJoCo environments for continual RL: Slippery* envs whose friction changes on a schedule.

Importing this package registers ``SlipperyAnt-v0``, ``SlipperyHalfCheetah-v0``, ``SlipperyHopper-v0``,
``SlipperyWalker2d-v0`` and ``SlipperyHumanoid-v0`` with gymnasium.
"""

from envs.registration import SLIPPERY_ENVS, register_slippery_envs, resolve_env_id
from envs.schedule import PAPER_CHANGE_EVERY, PAPER_FRICTION_RANGE, SCHEDULE_KWARGS, FrictionSchedule, check_friction
from envs.slippery import SlipperyWrapper, make_slippery_env

register_slippery_envs()

__all__ = [
    "PAPER_CHANGE_EVERY",
    "PAPER_FRICTION_RANGE",
    "SCHEDULE_KWARGS",
    "SLIPPERY_ENVS",
    "FrictionSchedule",
    "SlipperyWrapper",
    "check_friction",
    "make_slippery_env",
    "register_slippery_envs",
    "resolve_env_id",
]
