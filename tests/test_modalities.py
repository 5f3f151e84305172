"""The modalities registry (`network/modalities.py`): Orthanc's two configuration forms, the
refusal of bad definitions, AET lookups (StrictAetComparison, DicomCheckModalityHost), and
persistence in the index with DicomModalitiesInDatabase. The REST routes are in
`tests/test_rest_modalities.py`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.network.modalities import Modalities, RemoteModality, parse_modality
from dicomvault.server import Server

# What Orthanc 1.10.1 answers for `"b": {"AET": "B", "Host": "localhost", "Port": 105, "AllowEcho": false}`
# in GET /modalities?expand (observed).
ORTHANC_EXPANDED = {
    "AET": "B",
    "AllowEcho": False,
    "AllowEventReport": True,
    "AllowFind": True,
    "AllowFindWorklist": True,
    "AllowGet": True,
    "AllowMove": True,
    "AllowNAction": True,
    "AllowStore": True,
    "AllowTranscoding": True,
    "Host": "localhost",
    "LocalAet": "",
    "Manufacturer": "Generic",
    "Port": 105,
    "Timeout": 0,
    "UseDicomTls": False,
}


def test_both_forms() -> None:
    assert parse_modality("a", ["AETA", "127.0.0.1", 104]) == RemoteModality("AETA", "127.0.0.1", 104)
    assert parse_modality("a", ["AETA", "h", "104", "GE"]).manufacturer == "GE"
    parsed = parse_modality("b", {"AET": "B", "Host": "localhost", "Port": 105, "AllowEcho": False})
    assert parsed.to_json() == ORTHANC_EXPANDED
    assert not parsed.allows("Echo") and parsed.allows("Store")
    full = parse_modality("c", {**ORTHANC_EXPANDED, "LocalAet": "ME", "Timeout": 7, "AllowGet": False})
    assert (full.local_aet, full.timeout, full.allows("Get")) == ("ME", 7, False)
    assert parse_modality("c", full.to_json()) == full


@pytest.mark.parametrize(
    "value",
    [
        ["AET", "host"],
        ["AET", "host", 104, "GE", "extra"],
        ["", "host", 104],
        ["A" * 17, "host", 104],
        ["AET", "host", "port"],
        ["AET", "", 104],
        {"AET": "X", "Host": "h"},
        {"AET": "X", "Host": "h", "Port": 104, "AllowEcho": "yes"},
        {"AET": "X", "Host": "h", "Port": 104, "Timeout": -1},
        {"AET": "X", "Host": "h", "Port": True},
        {"AET": 5, "Host": "h", "Port": 104},
        "AET",
        5,
    ],
)
def test_bad_definitions_are_refused_with_the_name(value: Any) -> None:
    with pytest.raises(DicomVaultError) as refused:
        parse_modality("scanner", value)
    assert refused.value.code is ErrorCode.BAD_FILE_FORMAT
    assert '"scanner"' in str(refused.value)


@pytest.mark.parametrize(
    "value", [["AET", "host", 0], ["AET", "host", 65535], {"AET": "X", "Host": "h", "Port": -1}, ["A", "h", 1, "Bogus"]]
)
def test_out_of_range_values_are_orthancs_code_3(value: Any) -> None:
    with pytest.raises(DicomVaultError) as refused:
        parse_modality("scanner", value)
    assert refused.value.code is ErrorCode.PARAMETER_OUT_OF_RANGE and refused.value.http_status == 400


def test_manufacturers_as_orthanc_names_them() -> None:
    # Observed on Orthanc 1.10.1: obsolete names are accepted and replaced, others refused.
    expected = {"GE": "GE", "Vitrea": "Vitrea", "ClearCanvas": "Generic", "SyngoVia": "GenericNoWildcardInDates"}
    for given, kept in expected.items():
        assert parse_modality("m", {"AET": "X", "Host": "h", "Port": 1, "Manufacturer": given}).manufacturer == kept
    for refused in ("StoreScp", "generic", 5):
        with pytest.raises(DicomVaultError):
            parse_modality("m", {"AET": "X", "Host": "h", "Port": 1, "Manufacturer": refused})


def test_lookups_by_aet() -> None:
    configured = {"a": ["SCANNER", "10.0.0.1", 104], "b": ["scanner", "10.0.0.2", 104], "c": ["OTHER", "h", 11112]}
    loose = Modalities(configured)
    assert {m.host for m in loose.by_aet("Scanner")} == {"10.0.0.1", "10.0.0.2"}
    with pytest.raises(DicomVaultError) as ambiguous:
        loose.by_aet_unique("SCANNER")
    assert ambiguous.value.code is ErrorCode.UNKNOWN_MODALITY
    assert loose.by_aet_unique("other").port == 11112
    with pytest.raises(DicomVaultError):
        loose.by_aet_unique("NOBODY")
    strict = Modalities(configured, strict_aet=True)
    assert [m.host for m in strict.by_aet("scanner")] == ["10.0.0.2"]
    hosts = Modalities(configured, check_host=True)
    assert [m.host for m in hosts.by_aet("SCANNER", "10.0.0.2")] == ["10.0.0.2"]
    assert hosts.by_aet("SCANNER", "10.9.9.9") == []


def test_put_get_delete() -> None:
    registry = Modalities({})
    registry.put("x", ["X", "h", 1])
    assert registry.names() == ["x"] and registry.get("x").aet == "X"
    registry.put("x", {"AET": "Y", "Host": "h", "Port": 2})
    assert registry.get("x").aet == "Y"
    registry.delete("x")
    for call in (lambda: registry.get("x"), lambda: registry.delete("x")):
        with pytest.raises(DicomVaultError) as missing:
            call()
        assert missing.value.http_status == 404
    with pytest.raises(DicomVaultError):
        registry.put("", ["X", "h", 1])


def test_modalities_in_database_survive_a_restart(make_server: Callable[..., Server]) -> None:
    settings = {"DicomModalitiesInDatabase": True, "DicomModalities": {"conf": ["CONF", "h", 104]}}
    first = make_server(**settings)
    assert first.context.modalities.names() == ["conf"]
    first.context.modalities.put("added", ["ADDED", "h", 105])
    first.context.modalities.delete("conf")
    first.close()
    second = make_server(**settings)
    # The database, once written, is the truth; the configuration file only seeded it.
    assert second.context.modalities.names() == ["added"]
    second.close()
    memory_only = make_server(DicomModalities={"conf": ["CONF", "h", 104]})
    memory_only.context.modalities.put("added", ["ADDED", "h", 105])
    memory_only.close()
    assert make_server(DicomModalities={"conf": ["CONF", "h", 104]}).context.modalities.names() == ["conf"]
