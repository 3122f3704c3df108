"""Input repair before the first stage: duplicate and empty queries, missing or unreadable images,
per-query exclusions; everything dropped is counted in ``TaskData.issues``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace

from vretrver.images import check_readable
from vretrver.samples import SampleError, TaskData


class MissingImagesError(FileNotFoundError):
    """Image files named by the benchmark are not on disk."""


def add_issue(issues: dict[str, int], key: str, n: int) -> dict[str, int]:
    return {**issues, key: issues.get(key, 0) + n} if n else issues


def dedupe_queries(task: TaskData) -> TaskData:
    """Keep the first query of each id (a second copy would be scored twice); count the rest."""
    seen: set[str] = set()
    queries = []
    for q in task.queries:
        if q.id not in seen:
            seen.add(q.id)
            queries.append(q)
    if len(queries) == len(task.queries):
        return task
    return replace(
        task,
        queries=queries,
        issues=add_issue(task.issues, "duplicate_qids", len(task.queries) - len(queries)),
    )


def drop_empty_queries(task: TaskData) -> TaskData:
    """Queries with neither text nor image cannot be embedded or shown: drop and count them."""
    queries = [q for q in task.queries if q.query.text or q.query.images]
    if len(queries) == len(task.queries):
        return task
    return replace(
        task,
        queries=queries,
        issues=add_issue(task.issues, "empty_queries", len(task.queries) - len(queries)),
    )


def _images_of(task: TaskData) -> Iterator[str]:
    for q in task.queries:
        yield from q.query.images
    for c in task.pool.values():
        if c.image:
            yield c.image


def check_images(task: TaskData, skip_missing: bool) -> TaskData:
    """Fail listing missing image files, or (skip_missing) drop what needs them and count it.

    With ``skip_missing`` an image that exists but does not open is skipped and counted too; without it,
    such a file stops the first stage (or, with precomputed candidates, fails its query) naming the file.
    """
    missing = {p for p in set(_images_of(task)) if not os.path.exists(p)}
    if not missing and not skip_missing:
        return task
    first = sorted(missing)[:5]
    if not skip_missing:
        raise MissingImagesError(
            f"{task.name}: {len(missing)} image files are missing (first {len(first)}: {', '.join(first)}); "
            "check --data-root, or pass --skip-missing to score the rest"
        )
    # Files that are there but do not open (not an image, above the size limit) are skipped alike; only
    # their headers are read (about 0.1 ms a file), and only when skipping was asked for.
    unreadable = {p: why for p in set(_images_of(task)) - missing if (why := check_readable(p))}
    missing |= set(unreadable)
    pool = {d: c for d, c in task.pool.items() if not (c.image and c.image in missing)}
    queries = [q for q in task.queries if not any(p in missing for p in q.query.images)]
    issues = add_issue(task.issues, "missing_image_files", len(missing) - len(unreadable))
    issues = add_issue(issues, "unreadable_image_files", len(unreadable))
    issues = add_issue(issues, "missing_image_candidates", len(task.pool) - len(pool))
    issues = add_issue(issues, "missing_image_queries", len(task.queries) - len(queries))
    if missing:
        first = sorted(missing)[0]
        print(
            f"[eval] {task.name}: {len(missing) - len(unreadable)} image files are missing and "
            f"{len(unreadable)} do not open (first: {first}: {unreadable.get(first, 'missing')}); "
            f"skipped {len(task.queries) - len(queries)} queries and {len(task.pool) - len(pool)} candidates",
            file=sys.stderr,
        )
    return replace(task, pool=pool, queries=queries, issues=issues)


def exclusions(task: TaskData) -> dict[str, set[str]]:
    out = {}
    for q in task.queries:
        ex = q.meta.get("exclude")
        if ex is None:
            continue
        if not isinstance(ex, list) or not all(isinstance(x, str) for x in ex):
            raise SampleError(
                f"{task.name}: query {q.id}: field 'meta.exclude': expected a list of candidate ids"
            )
        if ex:
            out[q.id] = set(ex)
    return out


def prepare_task(task: TaskData, skip_missing: bool = False) -> TaskData:
    """Drop what cannot be scored (counted in ``issues``) and count what will score 0."""
    task = check_images(drop_empty_queries(dedupe_queries(task)), skip_missing)
    excluded = exclusions(task)
    unreachable = sum(
        1
        for q in task.queries
        if q.positives and not any(p in task.pool and p not in excluded.get(q.id, ()) for p in q.positives)
    )
    return replace(task, issues=add_issue(task.issues, "queries_without_positive_in_pool", unreachable))
