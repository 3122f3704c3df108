"""Visual Dialog v1.0 val as dialog -> image retrieval, read from its public distribution."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vretrver.benchmarks.common import as_list, bad, item, load_json, require
from vretrver.benchmarks.spec import BenchmarkSpec
from vretrver.samples import Candidate, Query, Sample, TaskData


def _sentence(s: str, end: str) -> str:
    s = s.strip()
    return s if not s or s[-1] in ".?!" else s + end


def load_visdial(
    data_root: str | os.PathLike, rounds: int = 10, limit: int | None = None, with_caption: bool = True
) -> list[TaskData]:
    """Visual Dialog v1.0 val as text-to-image retrieval: caption + the first ``rounds`` Q/A -> its image.

    The pool is the 2,064 val images. This is the ChatIR / FROMAGe setting; LamRA's released script
    leaves the caption out (``with_caption=False`` reproduces that).
    """
    root = Path(data_root).expanduser().resolve()
    path, img_dir = root / "visdial_1.0_val.json", root / "VisualDialog_val2018"
    require([path, img_dir], "Visual Dialog")
    data = item(load_json(path), str(path), ("data",))["data"]
    data = item(data, f"{path} [data]", ("questions", "answers", "dialogs"))
    questions, answers = data["questions"], data["answers"]
    pool: dict[str, Candidate] = {}
    queries: list[Sample] = []
    for i, d in enumerate(as_list(data["dialogs"], path, "dialogs")):
        where = f"{path} [dialogs {i}]"
        d = item(d, where, ("image_id", "caption", "dialog"))
        iid = str(d["image_id"])
        pool[iid] = Candidate(id=iid, image=str(img_dir / f"VisualDialog_val2018_{int(iid):012d}.jpg"))
        if limit is not None and len(queries) >= limit:
            continue
        lines = [_sentence(d["caption"], ".")] if with_caption else []
        for r, turn in enumerate(d["dialog"][:rounds]):
            turn = item(turn, f"{where} round {r}", ("question", "answer"))
            q, a = turn["question"], turn["answer"]
            if not (isinstance(q, int) and 0 <= q < len(questions)):
                raise bad(f"{where} round {r}", "question", f"an index below {len(questions)}", q)
            if not (isinstance(a, int) and 0 <= a < len(answers)):
                raise bad(f"{where} round {r}", "answer", f"an index below {len(answers)}", a)
            lines.append(f"Q: {_sentence(questions[q], '?')} A: {_sentence(answers[a], '.')}")
        queries.append(
            Sample(
                id=iid,
                query=Query(
                    text="\n".join(lines),
                    instruction="Find the everyday photo that this dialog is about.",
                ),
                positives=[iid],
                task="visdial",
                dataset="visdial",
                meta={"candidate_modality": "image", "split": "val", "rounds": rounds},
            )
        )
    return [_task("visdial", queries, pool, benchmark="visdial", split="val", rounds=rounds)]


def _task(
    name: str, queries: list[Sample], pool: dict[str, Candidate], issues: dict | None = None, **meta: Any
) -> TaskData:
    return TaskData(name, queries, pool, metric=SPEC.metric_for(name), issues=issues or {}, meta=meta)


SPEC = BenchmarkSpec(
    name="visdial",
    description="Visual Dialog v1.0 val, dialog -> image",
    reader=load_visdial,
    files=("visdial_1.0_val.json", "VisualDialog_val2018/VisualDialog_val2018_<12-digit id>.jpg"),
    paper_metric="R@1",
    splits=("val",),
    top_n=10,
    zero_shot=True,
)
