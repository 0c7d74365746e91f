"""Label sets of the active-learning page (/explore/label): answers saved as each one is given.

A label set has an unguessable id (whoever has its URL may add to it, as with a UWS job), the
classes it offers, and one answer per spectrum: a class, "not sure" or "bad" (the last two teach
nothing to propagation, and keep the spectrum from being asked again). Sets live in the archive
database beside the UWS jobs (tables ``label_set`` and ``label_answer``, written on the job store's
read-write connection), so every server process sees them and a restart loses nothing; like jobs
they are removed after ``[service] job_retention`` seconds, counted from the last answer.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from service.errors import LimitError, NotFoundError, UsageError
from service.uws.jobs import JobStore, now, stored

NOT_SURE, BAD = "not sure", "bad"
#: Answers that are no class.
UNCLASSED = (NOT_SURE, BAD)
MAX_CLASSES = 20
MAX_NAME = 64
_ID = re.compile(r"[A-Za-z0-9_-]{22}")


@dataclass
class LabelSet:
    set_id: str
    created: str
    classes: list[str]
    rounds: int
    last_job: str | None
    answers: dict[str, str] = field(default_factory=dict)  # obs_publisher_did → answer

    def counts(self) -> dict[str, int]:
        """Answers per class, then "not sure" and "bad"."""
        counted = dict.fromkeys([*self.classes, *UNCLASSED], 0)
        for label in self.answers.values():
            counted[label] = counted.get(label, 0) + 1
        return counted

    def labelled(self) -> dict[str, str]:
        """The answers that are classes: what propagation learns from."""
        return {did: label for did, label in self.answers.items() if label not in UNCLASSED}

    def to_json(self) -> dict:
        return {
            "id": self.set_id,
            "created": self.created,
            "classes": self.classes,
            "rounds": self.rounds,
            "last_job": self.last_job,
            "counts": self.counts(),
            "answers": [{"obs_publisher_did": d, "label": lab} for d, lab in self.answers.items()],
        }


def class_names(values: object) -> list[str]:
    """Checked class names: distinct non-empty texts, none of them "not sure" or "bad"."""
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UsageError('classes must be a list of names, such as ["single peak", "double peak"]')
    names = list(dict.fromkeys(v.strip() for v in values if v.strip()))
    if len(names) > MAX_CLASSES:
        raise LimitError(f"a label set offers at most {MAX_CLASSES} classes, not {len(names)}")
    for name in names:
        if len(name) > MAX_NAME or name.lower() in UNCLASSED or not name.isprintable():
            raise UsageError(
                f"class {name[:MAX_NAME]!r} is not allowed: printable, at most {MAX_NAME} characters, "
                f"and not {NOT_SURE!r} or {BAD!r} (every set has those)"
            )
    return names


class LabelSets:
    """The label sets of an archive, over the job store's connection."""

    def __init__(self, store: JobStore, retention_s: int) -> None:
        self.store = store
        self.retention = timedelta(seconds=retention_s)

    def create(self, classes: list[str]) -> LabelSet:
        set_id = secrets.token_urlsafe(16)
        created = now()
        self.store.execute(
            "INSERT INTO label_set (set_id, created, destruction, classes, rounds) VALUES (?, ?, ?, ?, 0)",
            (set_id, stored(created), stored(created + self.retention), json.dumps(classes)),
        )
        return self.get(set_id)

    def get(self, set_id: str) -> LabelSet:
        row = None
        if _ID.fullmatch(set_id):
            with self.store.lock:
                row = self.store.db.one("SELECT * FROM label_set WHERE set_id = ?", (set_id,))
        if row is None or row["destruction"] < stored(now()):
            raise NotFoundError(f"no label set {set_id!r} (it may have expired)")
        with self.store.lock:
            answers = self.store.db.all(
                "SELECT obs_publisher_did, label FROM label_answer WHERE set_id = ? ORDER BY answered, "
                "obs_publisher_did",
                (set_id,),
            )
        return LabelSet(
            set_id,
            row["created"],
            json.loads(row["classes"]),
            int(row["rounds"]),
            row["last_job"],
            {r[0]: r[1] for r in answers},
        )

    def answer(self, set_id: str, answers: list[tuple[str, str | None]], most: int) -> LabelSet:
        """Save answers (a class, "not sure" or "bad"; None takes an answer back). Classes the set
        does not offer yet are added to it (a label table brings its own)."""
        found = self.get(set_id)
        classes = list(found.classes)
        for _, label in answers:
            if label is not None and label.lower() not in UNCLASSED and label not in classes:
                classes.append(label)
        classes = class_names(classes)
        kept = dict(found.answers)
        for did, label in answers:
            if label is None:
                kept.pop(did, None)
            else:
                kept[did] = label.lower() if label.lower() in UNCLASSED else label
        if len(kept) > most:
            raise LimitError(f"a label set holds at most {most} answers ([ml] propagate_max_labels)")
        moment = now()
        remove = "DELETE FROM label_answer WHERE set_id = ? AND obs_publisher_did = ?"
        insert = "INSERT INTO label_answer (set_id, obs_publisher_did, label, answered) VALUES (?, ?, ?, ?)"
        with self.store.transaction() as db:
            for did, label in answers:
                db.execute(remove, (set_id, did))
                if label is not None:
                    db.execute(insert, (set_id, did, kept[did], stored(moment)))
            db.execute(
                "UPDATE label_set SET classes = ?, destruction = ? WHERE set_id = ?",
                (json.dumps(classes), stored(moment + self.retention), set_id),
            )
        return self.get(set_id)

    def new_round(self, set_id: str, job_url: str) -> LabelSet:
        """Count a propagation run started from the set, and remember its job."""
        self.get(set_id)
        self.store.execute(
            "UPDATE label_set SET rounds = rounds + 1, last_job = ?, destruction = ? WHERE set_id = ?",
            (job_url, stored(now() + self.retention), set_id),
        )
        return self.get(set_id)
