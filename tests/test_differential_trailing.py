"""Differential test: elements stored after the pixel data (a private group 7FE1, trailing
padding) are not part of Orthanc's tag renderings, but the file keeps them byte for byte."""

from __future__ import annotations

import io

import pytest

from tests.dicomgen import Spec, make_dataset
from tests.differential import Pair

pytestmark = [pytest.mark.orthanc]


def _trailing_file() -> tuple[bytes, str]:
    ds = make_dataset(Spec(seed=4242))
    ds.add_new(0x7FE10010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x7FE11001, "LO", "after the pixels")
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 4)  # Data Set Trailing Padding
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    from dicomvault.dicom.parsing import parse_instance

    return out.getvalue(), parse_instance(out.getvalue()).instance_id


def test_elements_after_pixel_data(checked: Pair) -> None:
    raw, instance = _trailing_file()
    checked.reset()
    checked.compare("POST", "/instances", raw)
    for route in ("tags", "tags?simplify", "tags?short", "simplified-tags", "file", "content"):
        checked.compare("GET", f"/instances/{instance}/{route}")
    checked.verdict()
