"""Feature rows from a replay's Parquet: keys, the feature matrix in spec order, labels.

Replay writes point-in-time features, one file per scored event type, so training
and backtests read them as they are; this module only finds the file's event type
(its schema metadata), checks the columns against that type's features and puts
rows in time order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from entities.spec import Spec

log = logging.getLogger(__name__)
KEY_COLUMNS = ("event_id", "entity_id", "ts")
# Schema metadata of replay's Parquet files: which scored type's rows, under which spec.
META_EVENT_TYPE = "supernova.event_type"
META_SPEC_HASH = "supernova.spec_hash"


class DatasetError(ValueError):
    """A feature file that does not fit the spec: the message names the columns."""


@dataclass
class Dataset:
    """Rows in time order; ``ts`` in epoch ms UTC; ``label`` NaN where unknown."""

    event_id: np.ndarray
    entity_id: np.ndarray
    ts: np.ndarray
    features: np.ndarray
    label: np.ndarray
    feature_names: list[str]
    event_type: str = ""

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, mask_or_index: np.ndarray) -> Dataset:
        """The rows selected by a boolean mask or an index array."""
        return Dataset(
            self.event_id[mask_or_index],
            self.entity_id[mask_or_index],
            self.ts[mask_or_index],
            self.features[mask_or_index],
            self.label[mask_or_index],
            self.feature_names,
            self.event_type,
        )

    def labelled(self) -> Dataset:
        """Only rows whose label is known."""
        return self.take(~np.isnan(self.label))

    def months(self) -> np.ndarray:
        """Calendar month (UTC) of each row as ``YYYY-MM``."""
        return self.ts.astype("datetime64[ms]").astype("datetime64[M]").astype(str)


def iso_utc(ms: int) -> str:
    """Epoch ms as ISO 8601 UTC to the second, e.g. ``2020-06-21T12:14:02Z``."""
    return str(np.datetime64(int(ms), "ms").astype("datetime64[s]")) + "Z"


def schema_metadata(event_type: str, spec_hash: str) -> dict[str, str]:
    """The schema metadata replay writes on each of its Parquet files."""
    return {META_EVENT_TYPE: event_type, META_SPEC_HASH: spec_hash}


def features_event_type(path: str | Path, spec: Spec) -> str:
    """The scored event type of a feature Parquet, from its schema metadata.

    A file without it (written before multi-type specs) is taken as the rows of the
    spec's only scored type; with several, it is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"feature file not found: {path}")
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(META_EVENT_TYPE.encode())
    if raw is None:
        if len(spec.scored_types) == 1:
            return spec.scored_types[0]
        raise DatasetError(
            f"{path}: no {META_EVENT_TYPE} in its metadata, and the spec scores {spec.scored_types}: "
            "replay it again (`supernova replay --features-out DIR`)"
        )
    event_type = raw.decode()
    if event_type not in spec.scored_types:
        raise DatasetError(f"{path}: rows of {event_type!r} events; the spec scores {spec.scored_types}")
    return event_type


def read_features(path: str | Path, spec: Spec) -> Dataset:
    """Read a replay feature Parquet, refusing one of another spec or whose columns differ from its type's."""
    path = Path(path)
    event_type = features_event_type(path, spec)
    names = spec.feature_names_of(event_type)
    schema = pq.read_schema(path)
    written = (schema.metadata or {}).get(META_SPEC_HASH.encode())
    if written is not None and written.decode() != spec.hash():
        # Same column names, other definitions (a filter flipped, a window changed): a model
        # trained or measured on them would be tied to a spec whose features it never saw.
        raise DatasetError(
            f"{path}: features of spec {written.decode()}, not of {spec.name or 'this spec'} "
            f"({spec.hash()}); replay it with this spec (`supernova replay --spec ...`)"
        )
    present = schema.names
    missing = [c for c in (*KEY_COLUMNS, *names, "label") if c not in present]
    if missing:
        raise DatasetError(
            f"{path}: missing columns {missing}; replay it with this spec (`supernova replay --spec ...`)"
        )
    table = pq.read_table(path, columns=[*KEY_COLUMNS, *names, "label"])
    ts = table.column("ts").cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64()).to_numpy()
    features = np.column_stack([table.column(n).to_numpy().astype(np.float64) for n in names])
    ds = Dataset(
        event_id=table.column("event_id").to_numpy().astype(object),
        entity_id=table.column("entity_id").to_numpy().astype(object),
        ts=ts,
        features=features.reshape(len(ts), len(names)),
        label=table.column("label").to_numpy().astype(np.float64),
        feature_names=names,
        event_type=event_type,
    )
    # Replay writes in event order already; a stable sort keeps ties in file order.
    if len(ts) and (np.diff(ts) < 0).any():
        log.info("%s: rows not in time order; sorting (stable)", path)
        ds = ds.take(np.argsort(ts, kind="stable"))
    return ds
