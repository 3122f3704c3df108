"""The paper's zero-shot sets: one module each (circo, genecis, visdial, vist, mtfiq); their readers are
importable from here too."""

from vretrver.benchmarks.circo import load_circo, write_circo_submission
from vretrver.benchmarks.common import DUPLICATES, copies_of
from vretrver.benchmarks.genecis import GENECIS_TASKS, load_genecis
from vretrver.benchmarks.mtfiq import load_mtfiq
from vretrver.benchmarks.visdial import load_visdial
from vretrver.benchmarks.vist import load_vist

__all__ = [
    "DUPLICATES",
    "GENECIS_TASKS",
    "copies_of",
    "load_circo",
    "load_genecis",
    "load_mtfiq",
    "load_visdial",
    "load_vist",
    "write_circo_submission",
]
