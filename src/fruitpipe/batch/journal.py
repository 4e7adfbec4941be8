"""The run journal, driver side: what is already done lives in the output and survives a dead driver.

`<output>/_fruitpipe/journal-<fingerprint>/` holds `identity.json` (model, weights, graph, input size,
preprocessing, precision, augment: what the features depend on) and `segments/<pass>/*.parquet`, written
by executors (`fruitpipe.executor.journal`). An image is identified by its key (the relative path, NFC)
and its version ("size:mtime_ns" locally, "size:ETag" on S3). A pass featurizes the listed (key,
version) pairs the journal lacks (an anti-join), then reads the run's current rows back from the
segments; every choice among duplicates (a retried or speculative attempt, a segment compacted again) is
the smallest segment name, so the outcome does not depend on which attempt won. After `_SUCCESS` the
segments are compacted to one per partition and stale ones removed.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fruitpipe import storage
from fruitpipe.batch import sources
from fruitpipe.batch.manifest import Fields, ModelEntry
from fruitpipe.executor.journal import KEY, PLAN_SCHEMA, SEGMENT_COLUMN, SOURCE_VERSION, VERSION, read_table
from fruitpipe.executor.worker import PRIOR_SHA256, PRIOR_VERSION, SAME_AS, SHA256, VIEW
from fruitpipe.image.shifts import DEFAULT_VIEWS
from fruitpipe.storage import Store

logger = logging.getLogger(__name__)

STATE_FOLDER = "_fruitpipe"  # everything of a run's that is not its published output
JOURNAL_PREFIX = "journal-"
IDENTITY = "identity.json"
PUBLISHED = "published.json"
SEGMENTS, TRANSIENT = "segments", "transient"
COMPACT_SUFFIX = "-compact"
MAX_ALIAS_HOPS = 16
INDEX_COLUMNS = (KEY, VERSION, SHA256, SAME_AS, VIEW)


@dataclass(frozen=True)
class Identity:
    """What a run's features depend on: two runs may share a journal only when all of it is equal."""

    model: str
    weights_sha256: str
    onnx_sha256: str | None
    input_size: int
    preprocessing: str  # canonical JSON of the model's preprocessing
    precision: str
    feature_dim: int
    augment: int
    augment_families: str = ""  # comma-separated, when views draw from some training-side families only
    augment_strength: float = 1.0

    @classmethod
    def of(cls, entry: ModelEntry, augment: int, families: tuple[str, ...] = (), strength: float = 1.0) -> Identity:
        """`families` as `shifts.view_families` returns them (the default mix counts as none named)."""
        subset = "" if not augment or set(families) in (set(), set(DEFAULT_VIEWS)) else ",".join(families)
        return cls(model=entry.name, weights_sha256=entry.weights_sha256, onnx_sha256=entry.onnx_sha256,
                   input_size=entry.input_size,
                   preprocessing=json.dumps(entry.preprocessing.to_json(), sort_keys=True),
                   precision=entry.precision or "fp32", feature_dim=entry.feature_dim, augment=augment,
                   augment_families=subset, augment_strength=float(strength) if augment else 1.0)

    def _fields(self) -> dict[str, Any]:
        """Its fields, the view settings only when not the default: journals from before they existed keep
        their fingerprint and their identity."""
        fields = asdict(self)
        if not self.augment_families:
            del fields["augment_families"]
        if self.augment_strength == 1.0:
            del fields["augment_strength"]
        return fields

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self._fields(), sort_keys=True).encode("utf-8")).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, **self._fields()}

    @classmethod
    def from_json(cls, document: object, where: str) -> Identity:
        fields = Fields(document, where)
        return cls(model=fields.text("model"), weights_sha256=fields.text("weights_sha256"),
                   onnx_sha256=fields.optional_text("onnx_sha256"), input_size=fields.integer("input_size"),
                   preprocessing=fields.text("preprocessing"), precision=fields.text("precision"),
                   feature_dim=fields.integer("feature_dim"), augment=fields.integer("augment"),
                   augment_families=fields.optional_text("augment_families") or "",
                   augment_strength=fields.optional_number("augment_strength") or 1.0)

    def differences(self, other: Identity) -> list[str]:
        """'name: this run's value vs the output's' for every field that differs."""
        names = {"model": "model", "weights_sha256": "weights", "onnx_sha256": "ONNX graph",
                 "input_size": "input size (--image-size)", "preprocessing": "preprocessing",
                 "precision": "precision", "feature_dim": "feature dimension", "augment": "--augment",
                 "augment_families": "--augment-families", "augment_strength": "--augment-strength"}
        mine, theirs = asdict(self), asdict(other)
        return [f"{label} {_short(mine[name])} here vs {_short(theirs[name])} in the output"
                for name, label in names.items() if mine[name] != theirs[name]]


def _short(value: object) -> str:
    text = str(value)
    return text[:16] + "…" if len(text) > 24 else text


SEGMENT_ID, ROW = "segment_id", "__row"
INDEX_SCHEMA = pa.schema([pa.field(KEY, pa.string()), pa.field(VERSION, pa.string()), pa.field(SEGMENT_ID, pa.int32()),
                          pa.field(SHA256, pa.string()), pa.field(SAME_AS, pa.string())])


@dataclass(frozen=True)
class Index:
    """The journal's (key, version) pairs as one Arrow table (INDEX_SCHEMA), one row per pair: the smallest
    segment name's. `segment_id` indexes `segments` (sorted, so the smallest id is the smallest name);
    `same_as` is the version it aliases (same bytes: no rows of its own), or null."""

    table: pa.Table
    segments: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.table.num_rows)

    @property
    def aliases(self) -> int:
        """Pairs recorded as the same bytes as an earlier version."""
        return len(self) - int(self.table.column(SAME_AS).null_count)

    def merged(self, other: Index) -> Index:
        """Both indexes as one (a pair in both: the smaller segment name's)."""
        names = tuple(sorted(set(self.segments) | set(other.segments)))
        position = {name: number for number, name in enumerate(names)}
        tables = []
        for index in (self, other):
            mapping = pa.array([position[name] for name in index.segments], pa.int32())
            ids = pc.take(mapping, index.table.column(SEGMENT_ID))
            tables.append(index.table.set_column(index.table.schema.get_field_index(SEGMENT_ID), SEGMENT_ID, ids))
        return Index(_first_per_pair(pa.concat_tables(tables)), names)


@dataclass(frozen=True)
class Plan:
    """What a pass does: the rows to featurize (`pending`: path, label, split, key, version and their key's
    earlier version and its hash, so the same bytes cost no model call) and what is reused."""

    pending: pa.Table
    reused: int  # listed images whose results the journal has
    removed: int  # keys the journal had that are no longer listed


@dataclass(frozen=True)
class PublishedState:
    """What the output's published version was made from: its journal's segment folders (one per pass, or
    one compacted) and how many of its photos failed for a passing reason (in errors/, retried next
    pass). Written after `_SUCCESS`; a pass may append to the version only when the journal still holds
    exactly these folders (no pass died after featurizing) and none of its photos is due for a retry."""

    run_id: str
    passes: tuple[str, ...]
    transient: int

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": 1, "run_id": self.run_id, "passes": list(self.passes), "transient": self.transient}

    @classmethod
    def from_json(cls, document: object, where: str) -> PublishedState:
        fields = Fields(document, where)
        return cls(fields.text("run_id"), fields.texts("passes"), fields.integer("transient"))


class Journal:
    """One output's journal for one identity; `open` refuses an output made with another identity."""

    def __init__(self, store: Store, output: str, identity: Identity) -> None:
        self.store = store
        self.output = output
        self.identity = identity
        self.folder = storage.join(output, STATE_FOLDER, JOURNAL_PREFIX + identity.fingerprint())

    @classmethod
    def open(cls, store: Store, output: str, identity: Identity) -> Journal:
        """The output's journal (created when missing); ValueError naming the difference when the output's
        journal was made with another model, weights, input size, preprocessing, precision or augment."""
        journal = cls(store, output, identity)
        journal.refuse_others()
        identity_file = storage.join(journal.folder, IDENTITY)
        if not store.exists(identity_file):
            store.write_bytes(identity_file, (json.dumps(identity.to_json(), indent=2) + "\n").encode("utf-8"))
        return journal

    def refuse_others(self) -> None:
        """ValueError naming the difference when the output holds a journal of another identity."""
        for other in self.others():
            raw = self.store.read_bytes(storage.join(other, IDENTITY))
            theirs = Identity.from_json(json.loads(raw), storage.redact(storage.join(other, IDENTITY)))
            differences = "; ".join(self.identity.differences(theirs)) or "another fingerprint"
            raise ValueError(f"{storage.redact(self.output)} was made differently ({differences}); features of "
                             "two models never mix: pass --overwrite to start over, or choose another --output")

    def others(self) -> list[str]:
        """Journal folders of other identities in this output."""
        state = storage.join(self.output, STATE_FOLDER)
        names = {relative.split("/", 1)[0] for relative in self.store.list_tree(state) if "/" in relative}
        mine = JOURNAL_PREFIX + self.identity.fingerprint()
        return [storage.join(self.output, STATE_FOLDER, name) for name in sorted(names)
                if name.startswith(JOURNAL_PREFIX) and name != mine]

    def segments(self, pass_id: str) -> str:
        return storage.join(self.folder, SEGMENTS, pass_id)

    def transient(self, pass_id: str) -> str:
        return storage.join(self.folder, TRANSIENT, pass_id)

    def segment_files(self, root: str | None = None) -> list[str]:
        """Segment URIs below `root` (default: every pass's segments), sorted by name (pass, partition,
        attempt, batch)."""
        root = root or storage.join(self.folder, SEGMENTS)
        return [storage.join(root, *relative.split("/")) for relative in self.store.list_tree(root)
                if relative.endswith(".parquet")]

    def index(self, files: Iterable[str] | None = None) -> Index:
        """The index over the segments (all, or `files`); the smallest segment name wins."""
        chosen = tuple(sorted(self.segment_files() if files is None else files))
        with ThreadPoolExecutor(max_workers=16) as pool:
            tables = list(pool.map(lambda uri: read_table(self.store, uri, INDEX_COLUMNS), chosen))
        parts = []
        for number, table in enumerate(tables):
            photos = table.filter(pc.equal(table.column(VIEW), 0))
            ids = pa.array(np.full(photos.num_rows, number, dtype=np.int32))
            parts.append(pa.table([photos.column(KEY), photos.column(VERSION), ids, photos.column(SHA256),
                                   photos.column(SAME_AS)], schema=INDEX_SCHEMA))
        return Index(_first_per_pair(pa.concat_tables(parts) if parts else INDEX_SCHEMA.empty_table()), chosen)

    def plan(self, listing: sources.ImageListing, index: Index) -> Plan:
        """Which listed images to featurize: those whose (key, version) the journal cannot resolve (an
        anti-join), each with the hash of its key's latest materialised version."""
        listed = listing.table
        done = np.zeros(listed.num_rows, dtype=bool)
        done[_resolved(index, listed).column(ROW).to_numpy()] = True
        numbered = listed.filter(pa.array(~done)).append_column(ROW, pa.array(np.flatnonzero(~done)))
        pending = numbered.join(_latest_materialised(index), keys=KEY, join_type="left outer").sort_by(ROW)
        pending = pending.select([*sources.LISTING_SCHEMA.names, PRIOR_SHA256, PRIOR_VERSION])
        journal_keys = pc.unique(index.table.column(KEY))
        removed = len(journal_keys) - int(pc.sum(pc.is_in(journal_keys, value_set=listed.column(KEY))).as_py() or 0)
        return Plan(pending, int(done.sum()), removed)

    def current(self, listing: sources.ImageListing, index: Index) -> pa.Table:
        """Read plan of the run's current rows (PLAN_SCHEMA: segment, key, source version, version, path,
        label, split) for every listed image the journal resolves, sorted by segment (each read once)."""
        resolved = _resolved(index, listing.table)
        rows = listing.table.take(resolved.column(ROW))
        segments = pc.take(pa.array(index.segments, pa.string()), resolved.column(SEGMENT_ID))
        table = pa.table([segments, rows.column(KEY), resolved.column(SOURCE_VERSION), rows.column(VERSION),
                          rows.column("path"), rows.column("label"), rows.column("split")], schema=PLAN_SCHEMA)
        return table.sort_by([(SEGMENT_COLUMN, "ascending"), (KEY, "ascending")])

    def compacted(self, run_id: str) -> str:
        return storage.join(self.folder, SEGMENTS, run_id + COMPACT_SUFFIX)

    def passes(self) -> tuple[str, ...]:
        """The segment folders the journal holds (a pass's, or a compaction's), sorted."""
        root = storage.join(self.folder, SEGMENTS)
        return tuple(sorted({relative.split("/", 1)[0] for relative in self.store.list_tree(root) if "/" in relative}))

    def transient_count(self, run_id: str) -> int:
        """The photos this pass failed to read for a passing reason."""
        return sum(read_table(self.store, uri, [KEY]).num_rows
                   for uri in self.segment_files(self.transient(run_id)))

    def clean_up(self, run_id: str, compacted: bool, transient: int) -> None:
        """After _SUCCESS: keep only this run's compacted segments (or, when it appended, every segment the
        version is made of); drop passing-failure records; record what the version was made from."""
        if compacted:
            keep = run_id + COMPACT_SUFFIX + "/"
            self.store.remove_tree(storage.join(self.folder, SEGMENTS), keep=(keep,))
        self.store.remove_tree(storage.join(self.folder, TRANSIENT))
        state = PublishedState(run_id, self.passes(), transient)
        self.store.write_bytes(storage.join(self.folder, PUBLISHED),
                               (json.dumps(state.to_json(), indent=2) + "\n").encode("utf-8"))

    def published(self) -> PublishedState | None:
        """What the published version was made from (None: not recorded, e.g. a pass died before)."""
        uri = storage.join(self.folder, PUBLISHED)
        try:
            raw = self.store.read_bytes(uri)
        except FileNotFoundError:
            return None
        return PublishedState.from_json(json.loads(raw), storage.redact(uri))


def _first_per_pair(table: pa.Table) -> pa.Table:
    """One row per (key, version): the smallest segment id's."""
    if not table.num_rows:
        return table
    ordered = table.sort_by([(KEY, "ascending"), (VERSION, "ascending"), (SEGMENT_ID, "ascending")])
    keys, versions = ordered.column(KEY).combine_chunks(), ordered.column(VERSION).combine_chunks()
    changed = pc.or_(pc.not_equal(keys[1:], keys[:-1]), pc.not_equal(versions[1:], versions[:-1]))
    return ordered.filter(pa.concat_arrays([pa.array([True]), changed]))


def _latest_materialised(index: Index) -> pa.Table:
    """Per key, its latest version with rows of its own (the largest segment id): key, sha256, version."""
    own = index.table.filter(pc.is_null(index.table.column(SAME_AS)))
    ordered = own.sort_by([(KEY, "ascending"), (SEGMENT_ID, "descending")])
    keys = ordered.column(KEY).combine_chunks()
    latest = ordered.filter(pa.concat_arrays([pa.array([True]), pc.not_equal(keys[1:], keys[:-1])])) if len(keys) \
        else ordered
    return pa.table([latest.column(KEY), latest.column(SHA256), latest.column(VERSION)],
                    names=[KEY, PRIOR_SHA256, PRIOR_VERSION])


def _resolved(index: Index, listed: pa.Table) -> pa.Table:
    """(ROW: the listing row, segment_id, SOURCE_VERSION: the version whose rows stand) for every listed
    (key, version) the journal resolves, following same-bytes aliases (at most MAX_ALIAS_HOPS)."""
    probe = pa.table([pa.array(np.arange(listed.num_rows)), listed.column(KEY), listed.column(VERSION)],
                     names=[ROW, KEY, VERSION])
    found = [pa.table([pa.array([], pa.int64()), pa.array([], pa.int32()), pa.array([], pa.string())],
                      names=[ROW, SEGMENT_ID, SOURCE_VERSION])]
    for _ in range(MAX_ALIAS_HOPS):
        if not probe.num_rows:
            break
        hit = probe.join(index.table, keys=[KEY, VERSION], join_type="inner")
        final = hit.filter(pc.is_null(hit.column(SAME_AS)))
        found.append(pa.table([final.column(ROW), final.column(SEGMENT_ID), final.column(VERSION)],
                              names=[ROW, SEGMENT_ID, SOURCE_VERSION]))
        aliased = hit.filter(pc.is_valid(hit.column(SAME_AS)))
        probe = pa.table([aliased.column(ROW), aliased.column(KEY), aliased.column(SAME_AS)], names=[ROW, KEY, VERSION])
    return pa.concat_tables(found)
