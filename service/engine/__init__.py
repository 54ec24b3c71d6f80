"""The data plane: fetch, process, make durable, commit — and fence, resume, restore.

:class:`Engine` is the facade (:mod:`.core`); its collaborators each own one concern:
:mod:`.stage1` and :mod:`.stage2` (the jobs' two stages), :mod:`.durability` (phase B and
commits), :mod:`.fencing` (one fenced producer per owned partition, G8), :mod:`.assignment`
(rebalances and the resume rule, G4), :mod:`.progress` (positions, and records fetched before a
resume decision), :mod:`.background` (lag, source ends, purges, the stall ticker).
"""

from service.engine.core import Engine
from service.engine.resume import records_between, resume_position

__all__ = ["Engine", "records_between", "resume_position"]
