"""The benchmark's data sets, generated once and cached under the temporary folder.

Two sets, each stored as a *pack*: one file of concatenated DICOM instances (`NAME.pack`) and a
JSON index of offsets and lengths (`NAME.json`, written last, so its presence means the pack is
complete). Client processes read only their share of a pack into memory before timing starts.

- **ct**: 512x512 16-bit CT-like slices (~525 KB each), 100 slices per series, two series per study,
  one patient per study.
- **tiny**: 8x8 instances (~1.5 KB) spread over many studies, ten per study in two series of five,
  two studies per patient. Patient names, study dates and the modalities of the two series vary
  (seeded, deterministic), so that `/tools/find` queries select a meaningful fraction.

The instances come from the test suite's generator (`tests.dicomgen`), so they look like the
files the tests upload.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import random
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.dicomgen import Spec, make_bytes

logger = logging.getLogger(__name__)

# Bump when the generated content changes, so an old cache is not reused.
DATA_VERSION = 1

CT_PER_SERIES = 100
TINY_PER_STUDY = 10
TINY_SERIES_PER_STUDY = 2
STUDIES_PER_PATIENT = 2

# Surnames chosen so that substring patterns match several of them (`*SMITH*` matches SMITH,
# SMITHSON, GOLDSMITH, ...), as they would in a real patient list.
SURNAMES = (
    "SMITH", "SMITHSON", "GOLDSMITH", "SMYTHE", "JOHNSON", "JOHNS", "JONES", "BROWN", "BROWNING",
    "MILLER", "MILLS", "DAVIS", "DAVIDSON", "GARCIA", "MARTIN", "MARTINEZ", "WILSON", "ANDERSON",
    "TAYLOR", "THOMAS", "MOORE", "JACKSON", "WHITE", "HARRIS", "CLARK", "LEWIS", "WALKER", "HALL",
    "ALLEN", "YOUNG", "KING", "WRIGHT", "SCOTT", "GREEN", "BAKER", "ADAMS", "NELSON", "HILL",
    "CAMPBELL", "MITCHELL",
)  # fmt: skip
GIVEN_NAMES = (
    "JOHN", "MARY", "ANNA", "PETER", "LUCY", "JAMES", "EMMA", "PAUL", "SARAH", "MARK", "JULIA",
    "DAVID", "LAURA", "HENRY", "ALICE",
)  # fmt: skip
# Modality pairs (series 1, series 2) of a study, with their weights.
MODALITY_PAIRS = (
    (("CT", "CT"), 30),
    (("MR", "MR"), 25),
    (("CT", "PT"), 8),
    (("PT", "CT"), 2),
    (("US", "US"), 10),
    (("CR", "CR"), 8),
    (("DX", "DX"), 6),
    (("MG", "MG"), 5),
    (("NM", "CT"), 3),
    (("MR", "SR"), 3),
)
FIRST_DATE = datetime.date(2010, 1, 1)
LAST_DATE = datetime.date(2024, 12, 31)


@dataclass(frozen=True)
class Sizes:
    ct: int
    tiny: int
    tiny_studies: int

    def key(self) -> str:
        return f"v{DATA_VERSION}-ct{self.ct}-tiny{self.tiny}x{self.tiny_studies}"

    @classmethod
    def at_least(cls, base: Sizes, ct: int, tiny: int) -> Sizes:
        """`base` (bench.run's cached packs) when it is large enough, larger packs otherwise."""
        return cls(
            ct=max(ct, base.ct),
            tiny=max(tiny, base.tiny),
            tiny_studies=base.tiny_studies if tiny <= base.tiny else -(-tiny // TINY_PER_STUDY),
        )


FULL = Sizes(ct=1000, tiny=20000, tiny_studies=2000)
QUICK = Sizes(ct=100, tiny=1000, tiny_studies=100)


@dataclass(frozen=True)
class Pack:
    """One cached data set: where its bytes are and where each instance starts."""

    name: str
    path: Path
    entries: tuple[tuple[int, int], ...]  # (offset, length) of each instance

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def total_bytes(self) -> int:
        return sum(length for _, length in self.entries)


def load_items(path: Path, entries: list[tuple[int, int]]) -> list[bytes]:
    """Read some instances of a pack into memory (what a client process uploads)."""
    items: list[bytes] = []
    with open(path, "rb") as f:
        for offset, length in entries:
            f.seek(offset)
            items.append(f.read(length))
    return items


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "dicomvault-bench-cache"


def _ct_pixels(seed: int, base: bytes) -> bytes:
    # A rotation of one base pattern: every slice differs, without packing 262,144 values each time.
    shift = (seed * 2 * 257) % len(base)
    return base[shift:] + base[:shift]


def iter_ct(count: int) -> Iterator[bytes]:
    rows = columns = 512
    base = struct.pack(f"<{rows * columns}h", *(((i * 7) % 3000) - 1000 for i in range(rows * columns)))
    for n in range(count):
        series = n // CT_PER_SERIES
        study = series // 2
        spec = Spec(
            seed=900_000 + n,
            patient_id=f"CTPAT{study:04d}",
            patient_name=f"CT^PATIENT{study:04d}",
            study_uid=f"1.2.826.0.1.3680043.10.1234.90.{study}",
            series_uid=f"1.2.826.0.1.3680043.10.1234.91.{series}",
            sop_uid=f"1.2.826.0.1.3680043.10.1234.92.{n}",
            modality="CT",
            study_date="20230301",
            study_description="CT chest abdomen",
            series_description=f"Axial {series % 2}",
            instance_number=n % CT_PER_SERIES + 1,
            extra={"Rows": rows, "Columns": columns, "PixelData": _ct_pixels(n, base)},
        )
        yield make_bytes(spec)


def iter_tiny(count: int, studies: int) -> Iterator[bytes]:
    """`count` instances over `studies` studies (at least one instance per study)."""
    rng = random.Random(20240917)
    span = (LAST_DATE - FIRST_DATE).days
    pairs = [pair for pair, _ in MODALITY_PAIRS]
    weights = [weight for _, weight in MODALITY_PAIRS]
    per_study = max(1, count // studies)
    per_series = max(1, per_study // TINY_SERIES_PER_STUDY)
    emitted = 0
    for study in range(studies):
        patient = study // STUDIES_PER_PATIENT
        if study % STUDIES_PER_PATIENT == 0:
            name = f"{rng.choice(SURNAMES)}^{rng.choice(GIVEN_NAMES)}"
        date = (FIRST_DATE + datetime.timedelta(days=rng.randrange(span + 1))).strftime("%Y%m%d")
        modalities = rng.choices(pairs, weights)[0]
        # The last study takes what the division left over.
        n_here = per_study if study < studies - 1 else count - emitted
        for k in range(n_here):
            series = min(k // per_series, TINY_SERIES_PER_STUDY - 1)
            spec = Spec(
                seed=study * 1000 + k,
                patient_id=f"PAT{patient:05d}",
                patient_name=name,
                study_uid=f"1.2.826.0.1.3680043.10.1234.80.{study}",
                series_uid=f"1.2.826.0.1.3680043.10.1234.81.{study}.{series}",
                sop_uid=f"1.2.826.0.1.3680043.10.1234.82.{study}.{k}",
                modality=modalities[series],
                study_date=date,
                study_description=f"Study {study % 17}",
                series_description=f"Series {series}",
                instance_number=k + 1,
            )
            emitted += 1
            yield make_bytes(spec)


def _write_pack(folder: Path, name: str, items: Iterator[bytes]) -> Pack:
    path = folder / f"{name}.pack"
    index = folder / f"{name}.json"
    entries: list[tuple[int, int]] = []
    offset = 0
    with open(path, "wb") as f:
        for data in items:
            f.write(data)
            entries.append((offset, len(data)))
            offset += len(data)
    tmp = index.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"name": name, "entries": entries}))
    os.replace(tmp, index)
    return Pack(name, path, tuple(entries))


def _read_pack(folder: Path, name: str) -> Pack | None:
    index = folder / f"{name}.json"
    path = folder / f"{name}.pack"
    if not index.is_file() or not path.is_file():
        return None
    data = json.loads(index.read_text())
    entries = tuple((int(o), int(n)) for o, n in data["entries"])
    if entries and entries[-1][0] + entries[-1][1] != path.stat().st_size:
        return None
    return Pack(name, path, entries)


def prepare(sizes: Sizes, cache_dir: Path) -> tuple[Pack, Pack]:
    """The CT and tiny packs for `sizes`, generated on first use."""
    folder = cache_dir / sizes.key()
    folder.mkdir(parents=True, exist_ok=True)
    ct = _read_pack(folder, "ct")
    if ct is None:
        logger.warning("generating %d CT slices in %s (once)", sizes.ct, folder)
        ct = _write_pack(folder, "ct", iter_ct(sizes.ct))
    tiny = _read_pack(folder, "tiny")
    if tiny is None:
        logger.warning(
            "generating %d tiny instances over %d studies in %s (once)", sizes.tiny, sizes.tiny_studies, folder
        )
        tiny = _write_pack(folder, "tiny", iter_tiny(sizes.tiny, sizes.tiny_studies))
    return ct, tiny
