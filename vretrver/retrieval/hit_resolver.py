"""How a hit of a V-Retrver parquet ``hit`` list becomes a pool id.

A hit is resolved to a pool id by an id field when it has one (``hit_id_key``, else the first of ``did``,
``candidate_id``, ``cand_id``, ``id``; an integer is LamRA's hashed ``dataset_id * 10000000 + n``), else
by what it shows:

* the image path: exact, else by its last 3, 2 or 1 path components (the files name paths on the
  authors' machines);
* the text: as in the pool, else as LamRA writes candidate texts into its rerank prompts
  (:func:`lamra_format`), else as a prefix of a LamRA-formatted pool text (LamRA's rerank training data
  cuts candidate texts to 256 tokenizer tokens; a cut text is accepted from
  :data:`MIN_PREFIX_CHARS` characters on, and only when it names one text);
* with both, the candidates matching both are preferred.

Identical texts (or images) held by several pool ids are distinct candidates: the hits that show them
take those ids in pool order, one each, so a list keeps its length. An id a concatenated pool holds n
times (``task.meta["copies"]``) may be listed n times; the repeats are left to the scorer, which ranks
every copy.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from vretrver.jsonl import SampleError
from vretrver.lamra_text import lamra_clean as lamra_format
from vretrver.samples import Candidate

if TYPE_CHECKING:
    from vretrver.retrieval.precomputed import PrecomputedStats

HIT_ID_KEYS = ("did", "candidate_id", "cand_id", "id")
# LamRA's integer forms of M-BEIR ids (dataset/datasets_mbeir*.py, hash_qid / hash_did).
QID_HASH_BASE = 500_000
DID_HASH_BASE = 10_000_000
# A hit text that matches no pool text is tried as a cut-off prefix from this length on (a 256-token cut
# is far longer; short texts would match too many captions by chance).
MIN_PREFIX_CHARS = 64


def unhash_qid(n: int) -> str:
    """``dataset_id * 500000 + k`` -> ``"dataset_id:k"`` (LamRA's ``unhash_qid``)."""
    return f"{n // QID_HASH_BASE}:{n % QID_HASH_BASE}"


def unhash_did(n: int) -> str:
    """``dataset_id * 10000000 + k`` -> ``"dataset_id:k"`` (LamRA's ``unhash_did``)."""
    return f"{n // DID_HASH_BASE}:{n % DID_HASH_BASE}"


def field_error(where: str, field_name: str, expected: str, got: Any = None) -> SampleError:
    """A :class:`SampleError` naming the place, the field, what it should hold and (cut short) what it holds."""
    shown = "" if got is None else f", got {json.dumps(got, default=repr)[:80]}"
    return SampleError(f"{where}: field '{field_name}': expected {expected}{shown}")


def short_json(v: Any, n: int = 60) -> str:
    """``v`` as JSON, cut to ``n`` characters (for messages)."""
    s = json.dumps(v, ensure_ascii=False, default=repr)
    return s if len(s) <= n else s[: n - 3] + '..."'


def _multi_add(table: dict[str, Any], key: str, did: str) -> None:
    # One id is kept as a str, several as a list (pool order): pools run to millions of entries.
    cur = table.get(key)
    if cur is None:
        table[key] = did
    elif isinstance(cur, list):
        cur.append(did)
    else:
        table[key] = [cur, did]


def _multi_get(table: dict[str, Any], key: str) -> list[str]:
    cur = table.get(key)
    if cur is None:
        return []
    return cur if isinstance(cur, list) else [cur]


class HitResolver:
    """Maps hit records to pool ids; the lookup tables are built on first need."""

    def __init__(
        self, pool: dict[str, Candidate] | None, id_key: str | None, copies: dict[str, int] | None = None
    ):
        self.pool = pool
        self.id_key = id_key
        self.copies = copies or {}
        self._paths: list[dict[str, Any]] | None = None  # full path, last 3, 2, 1 components
        self._texts: tuple[dict[str, Any], dict[str, Any]] | None = None  # as in the pool, LamRA-formatted
        self._sorted: list[str] | None = None  # LamRA-formatted texts, sorted (prefix search)

    # ---------------------------------------------------------------- tables

    def _path_tables(self) -> list[dict[str, Any]]:
        if self._paths is None:
            self._paths = [{}, {}, {}, {}]
            for did, c in (self.pool or {}).items():
                if c.image:
                    norm = _posix(c.image)
                    _multi_add(self._paths[0], norm, did)
                    parts = PurePosixPath(norm).parts
                    for k in (3, 2, 1):
                        _multi_add(self._paths[4 - k], "/".join(parts[-k:]), did)
        return self._paths

    def _text_tables(self) -> tuple[dict[str, Any], dict[str, Any]]:
        if self._texts is None:
            raw: dict[str, Any] = {}
            fmt: dict[str, Any] = {}
            for did, c in (self.pool or {}).items():
                if c.text:
                    _multi_add(raw, c.text, did)
                    _multi_add(fmt, lamra_format(c.text), did)
            self._texts = (raw, fmt)
        return self._texts

    def _image_ids(self, img: str) -> list[str]:
        tables = self._path_tables()
        norm = _posix(img)
        ids = _multi_get(tables[0], norm)
        if ids:
            return ids
        parts = PurePosixPath(norm).parts
        for k in (3, 2, 1):
            ids = _multi_get(tables[4 - k], "/".join(parts[-k:]))
            if ids:
                return ids
        return []

    def _text_ids(self, txt: str) -> tuple[list[str], str]:
        raw, fmt = self._text_tables()
        # Pool texts equal to the hit first, then those equal to it once both are LamRA-formatted.
        same = _multi_get(raw, txt) or _multi_get(raw, txt.strip())
        alike = _multi_get(fmt, txt) or _multi_get(fmt, lamra_format(txt))
        if same or alike:
            return list(dict.fromkeys(same + alike)), "text" if same else "text_lamra"
        # A cut-off text (a tokenizer cut may leave a broken last character) is a prefix of one text.
        head = txt.rstrip("\ufffd").rstrip()
        if len(head) < MIN_PREFIX_CHARS:
            return [], ""
        if self._sorted is None:
            self._sorted = sorted(fmt)
        i = bisect.bisect_left(self._sorted, head)
        found = []
        while i < len(self._sorted) and self._sorted[i].startswith(head) and len(found) < 2:
            found.append(self._sorted[i])
            i += 1
        if len(found) != 1:
            return [], "ambiguous prefix" if found else ""
        return _multi_get(fmt, found[0]), "text_prefix"

    # ---------------------------------------------------------------- resolution

    def row(
        self, hits: list[Any], where: str, column: str, stats: PrecomputedStats
    ) -> list[tuple[str, float]]:
        """One query's hits as ``(pool id, score)``, in list order; losses counted in ``stats``."""
        times: Counter = Counter()  # how often each id was taken in this list
        ranked: list[str] = []
        scores: list[float | None] = []
        for j, h in enumerate(hits):
            at = f"{where} {column}[{j}]"
            choices, score, how = self.resolve(h, where, f"{column}[{j}]")
            if not choices:
                stats.unresolved_hits += 1
                stats.note(f"{at}: {how}")
                continue
            if self.pool is not None and choices[0] not in self.pool:
                stats.unknown_dids += 1
                stats.note(f"{at}: id {choices[0]!r} is not in the pool")
                continue
            # The first choice not yet taken, else one the pool holds more copies of than taken so far.
            did = next((d for d in choices if not times[d]), None)
            if did is None:
                did = next((d for d in choices if times[d] < self.copies.get(d, 1)), None)
                if did is not None:
                    times[did] += 1
                    stats.copy_hits += 1
                    continue
                shown = f"candidate {choices[0]!r}" if how == "id" else f"all {len(choices)} candidates"
                stats.unresolved_hits += 1
                stats.note(f"{at}: repeats {shown} listed earlier ({how})")
                continue
            times[did] += 1
            stats.matched[how] += 1
            ranked.append(did)
            scores.append(score)
        if ranked and all(s is not None for s in scores):
            return [(d, float(s)) for d, s in zip(ranked, scores)]  # type: ignore[arg-type]
        return [(d, -float(r)) for r, d in enumerate(ranked)]

    def resolve(self, h: Any, where: str, field_name: str) -> tuple[list[str], float | None, str]:
        """``(pool ids it may be, in pool order; score; how it matched)``; no ids: ``how`` says why."""
        if isinstance(h, str):
            return ([h], None, "id") if h else ([], None, "an empty id")
        if not isinstance(h, dict):
            raise field_error(where, field_name, "a candidate id or a record", h)
        score = None
        for key in ("score", "scores", "similarity"):
            v = h.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                score = float(v)
                break
        keys = (self.id_key,) if self.id_key else HIT_ID_KEYS
        for key in keys:
            v = h.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                v = str(v) if self.pool is None or str(v) in self.pool else unhash_did(v)
            if isinstance(v, str) and v:
                return [v], score, "id"
        if self.id_key:
            raise field_error(where, f"{field_name}.{self.id_key}", "a candidate id")
        if self.pool is None:
            raise field_error(
                where,
                field_name,
                f"an id field ({', '.join(HIT_ID_KEYS)}); hits without one need the task's pool",
            )
        img = _first_str(h, "candidate_images", "candidate_image", "img_path")
        txt = _first_str(h, "candidate_texts", "candidate_text", "txt")
        img_ids = self._image_ids(img) if img else []
        txt_ids, txt_how = self._text_ids(txt) if txt else ([], "")
        both = set(txt_ids)
        if img_ids and any(d in both for d in img_ids):
            choices, how = [d for d in img_ids if d in both], f"image+{txt_how}"
        elif img_ids:
            choices, how = img_ids, "image"
        else:
            choices, how = txt_ids, txt_how
        shown = ", ".join(f"{k} {short_json(v)}" for k, v in (("image", img), ("text", txt)) if v)
        if not choices:
            why = "an ambiguous text prefix" if txt_how == "ambiguous prefix" else "no pool candidate"
            return [], None, f"{why} for {shown or 'a hit with no id, image or text'}"
        if img_ids and len({_posix(self.pool[d].image or "") for d in choices}) > 1:
            return [], None, f"several pool images end like {shown}"
        return choices, score, how


def _first_str(h: dict[str, Any], *keys: str) -> str | None:
    for key in keys:
        v = h.get(key)
        if isinstance(v, list):
            v = v[0] if v else None
        if isinstance(v, str) and v.strip():
            return v
    return None


def _posix(p: str) -> str:
    return p.strip().replace("\\", "/")
