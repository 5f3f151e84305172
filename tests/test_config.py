"""Tests of the configuration loader against real files, and of its table against the real Orthanc."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import json5
import pytest

from dicomvault.config import Config, config_from_mapping, documented_keys, load_config
from dicomvault.config_keys import KEYS, KEYS_BY_NAME
from dicomvault.errors import DicomVaultError, ErrorCode

NO_ENV: dict[str, str] = {}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path / "conf" / "orthanc.json", text), env=env or NO_ENV)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# --- Defaults -------------------------------------------------------------------------------------


def test_defaults_without_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, env=NO_ENV)
    assert config.source == "<defaults>"
    assert config.files == ()
    assert config.raw == {}
    assert config.name == ""  # what Orthanc 1.10.1 reports in /system without a "Name" key
    assert config.storage_directory == tmp_path / "OrthancStorage"
    assert config.index_directory == config.storage_directory
    assert config.temporary_directory is None
    assert (config.http_port, config.dicom_port, config.dicom_aet) == (8042, 4242, "ORTHANC")
    assert config.http_server_enabled and config.dicom_server_enabled
    assert not config.storage_compression
    assert config.storage_compression_level == 1
    assert config.maximum_upload_size == 4 * 1024**3
    assert config.store_md5_for_attachments and not config.overwrite_instances
    assert not config.remote_access_allowed and not config.authentication_enabled
    assert config.registered_users == {}
    assert config.http_compression_enabled
    assert (config.stable_age, config.maximum_storage_size, config.maximum_patient_count) == (60, 0, 0)
    assert config.maximum_storage_mode == "Recycle"
    assert (config.limit_find_results, config.limit_find_instances) == (0, 0)
    assert not config.check_revisions
    assert config.accepted_transfer_syntaxes == ("1.2.840.10008.1.*",)
    assert config.http_timeout == 0  # Orthanc's effective default, not the sample file's 60
    assert config.aws_s3_storage is None and config.postgresql is None
    assert config.is_http_server_secure


def test_config_is_frozen_and_read_only(tmp_path: Path) -> None:
    config = load_text(tmp_path, '{"DicomModalities": {"pacs": ["PACS", "localhost", 104]}, "Plugins": ["a"]}')
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.http_port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.raw["HttpPort"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        config.dicom_modalities["other"] = []  # type: ignore[index]
    assert config.dicom_modalities["pacs"] == ("PACS", "localhost", 104)
    assert config.option("Plugins") == ("a",)


def test_option_gives_checked_values_and_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, '{"SslEnabled": true}')
    assert config.option("SslEnabled") is True
    assert config.option("WebDavEnabled") is True
    assert config.option("LuaScripts") == ()
    assert config.option("AuthenticationEnabled") is None
    with pytest.raises(KeyError):
        config.option("NoSuchKey")


def test_repr_hides_secrets(tmp_path: Path) -> None:
    config = load_text(tmp_path, '{"RegisteredUsers": {"alice": "s3cret"}, "PostgreSQL": {"Password": "pgs3cret"}}')
    assert "s3cret" not in repr(config)


# --- Syntax -----------------------------------------------------------------------------------


def test_comments_of_both_kinds_and_trailing_comma(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """{
          // line comment with "quotes" and ${NOT_A_VARIABLE}
          "Name" : "Commented", /* block comment,
             over "two" lines */
          "HttpPort" : 8043,  // after a value
          "StorageDirectory" : "http://not/a/comment",
        }""",
    )
    assert config.name == "Commented"
    assert config.http_port == 8043
    assert str(config.storage_directory).endswith("http:/not/a/comment")


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"Name": "bom"}')
    assert load_config(path, env=NO_ENV).name == "bom"


def test_key_repeated_in_one_file_keeps_last_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_text(tmp_path, '{"Name": "first", "Name": "second"}')
    assert config.name == "second"
    assert any('"Name" appears twice' in w for w in warnings_of(caplog))


# --- Folders ----------------------------------------------------------------------------------


def test_folder_files_are_merged_in_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    write(folder / "b.json", '{"HttpPort": 8050}')
    write(folder / "a.json", '{"Name": "merged" /* comment */}')
    write(folder / "c.JSON", '{"DicomAet": "UPPER"}')  # Orthanc matches the extension in any case
    write(folder / "notes.txt", "not json at all")
    write(folder / "sub" / "d.json", '{"DicomPort": 1}')  # not recursive
    config = load_config(folder, env=NO_ENV)
    assert [p.name for p in config.files] == ["a.json", "b.json", "c.JSON"]
    assert (config.name, config.http_port, config.dicom_aet, config.dicom_port) == (
        "merged",
        8050,
        "UPPER",
        4242,
    )
    assert config.source == str(folder)
    assert set(config.raw) == {"Name", "HttpPort", "DicomAet"}


def test_key_defined_in_two_files_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    write(folder / "a.json", '{"Name": "one"}')
    write(folder / "b.json", '{"HttpPort": 8050}')
    write(folder / "c.json", '{"Name": "two"}')
    with pytest.raises(DicomVaultError) as err:
        load_config(folder, env=NO_ENV)
    assert err.value.code is ErrorCode.BAD_FILE_FORMAT
    assert err.value.details is not None
    assert '"Name"' in err.value.details
    assert str(folder / "a.json") in err.value.details and str(folder / "c.json") in err.value.details


def test_folder_without_json_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "readme.txt", "{}")
    with pytest.raises(DicomVaultError) as err:
        load_config(tmp_path / "conf", env=NO_ENV)
    assert err.value.code is ErrorCode.INEXISTENT_FILE
    assert str(tmp_path / "conf") in str(err.value)


# --- File errors ------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DicomVaultError) as err:
        load_config(tmp_path / "nope.json", env=NO_ENV)
    assert err.value.code is ErrorCode.INEXISTENT_FILE
    assert "nope.json" in str(err.value)


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(DicomVaultError) as err:
        load_text(tmp_path, '{\n  "Name": "x",\n  "HttpPort": 80 80\n}\n')
    assert err.value.code is ErrorCode.BAD_JSON
    assert "orthanc.json" in str(err.value)
    assert "line 3" in str(err.value)


@pytest.mark.parametrize("text", ["", "[1, 2]", '"just a string"'])
def test_document_must_be_an_object(tmp_path: Path, text: str) -> None:
    with pytest.raises(DicomVaultError) as err:
        load_text(tmp_path, text)
    assert err.value.code is ErrorCode.BAD_JSON
    assert "orthanc.json" in str(err.value)


def test_syntax_error_mentions_unset_variable(tmp_path: Path) -> None:
    with pytest.raises(DicomVaultError) as err:
        load_text(tmp_path, '{"HttpPort": ${UNSET_PORT}, "Name": "x"}')
    assert err.value.code is ErrorCode.BAD_JSON
    assert "UNSET_PORT" in str(err.value)


# --- Environment variables ----------------------------------------------------------------------


def test_environment_substitution(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_text(
        tmp_path,
        """{
          "Name": "${DV_NAME}",
          "HttpPort": ${DV_PORT},
          "DicomAet": "${DV_UNSET:-FALLBACK}",
          "DicomPort": ${DV_UNSET_PORT:-4343},
          "HttpProxy": "${DV_EMPTY:-not used}",
          "DefaultPrivateCreator": "a${DV_MISSING}b",
          // ${DV_IN_COMMENT} is not looked up
        }""",
        env={"DV_NAME": "from-env", "DV_PORT": "8099", "DV_EMPTY": ""},
    )
    assert config.name == "from-env"
    assert config.http_port == 8099  # unquoted: the value becomes a number, as in Orthanc
    assert config.dicom_aet == "FALLBACK"
    assert config.dicom_port == 4343
    assert config.http_proxy == ""  # set but empty: Orthanc keeps it empty (unlike the shell's :-)
    assert config.option("DefaultPrivateCreator") == "ab"
    warnings = warnings_of(caplog)
    assert any("DV_MISSING" in w for w in warnings)
    assert not any("DV_IN_COMMENT" in w or "DV_UNSET" in w for w in warnings)


def test_environment_values_are_literal_inside_strings(tmp_path: Path) -> None:
    tricky = 'C:\\Data\\"quoted"\n'
    config = load_text(
        tmp_path,
        "{\"Name\": \"${DV_TRICKY}\", 'DicomAet': 'A${DV_QUOTE}B'}",
        env={"DV_TRICKY": tricky, "DV_QUOTE": "'"},
    )
    assert config.name == tricky
    assert config.dicom_aet == "A'B"


def test_environment_substitution_in_mapping() -> None:
    config = config_from_mapping(
        {"Name": "${DV_NAME}", "RegisteredUsers": {"${DV_USER}": "${DV_PASSWORD:-pw}"}},
        env={"DV_NAME": "mapped", "DV_USER": "bob"},
    )
    assert config.name == "mapped"
    assert config.registered_users == {"bob": "pw"}


def test_process_environment_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DV_TEST_NAME", "from-os")
    path = write(tmp_path / "o.json", '{"Name": "${DV_TEST_NAME}"}')
    assert load_config(path).name == "from-os"


# --- Keys and types ---------------------------------------------------------------------------


def test_unknown_key_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = load_text(tmp_path, '{"HttpPorts": 1234, "MyOwnSetting": {"a": 1}, "Name": "ok"}')
    assert config.name == "ok"
    assert config.http_port == 8042
    assert config.raw["MyOwnSetting"] == {"a": 1}
    warnings = warnings_of(caplog)
    assert any('"HttpPorts"' in w and 'did you mean "HttpPort"' in w and "orthanc.json" in w for w in warnings)
    assert any('"MyOwnSetting"' in w for w in warnings)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("HttpPort", "abc"),
        ("HttpPort", "8042"),
        ("HttpPort", 8042.0),
        ("HttpPort", None),
        ("HttpPort", True),
        ("StorageCompression", 1),
        ("StorageCompression", "true"),
        ("Name", 5),
        ("DicomAet", None),
        ("StorageDirectory", ["a"]),
        ("RegisteredUsers", []),
        ("RegisteredUsers", {"alice": 1}),
        ("LuaScripts", "script.lua"),
        ("AcceptedTransferSyntaxes", 5),
        ("DicomModalities", []),
        ("UserMetadata", {"Sample": "1024"}),
        ("AuthenticationEnabled", "yes"),
        ("PostgreSQL", True),
    ],
)
def test_wrong_type_is_refused(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(DicomVaultError) as err:
        load_text(tmp_path, json.dumps({key: value}))
    assert err.value.code is ErrorCode.BAD_PARAMETER_TYPE
    assert f'"{key}"' in str(err.value)
    assert "orthanc.json" in str(err.value)


def test_wrong_type_in_mapping_names_the_source() -> None:
    with pytest.raises(DicomVaultError) as err:
        config_from_mapping({"HttpPort": "abc"}, source="<unit test>")
    assert err.value.code is ErrorCode.BAD_PARAMETER_TYPE
    assert '"HttpPort"' in str(err.value) and "<unit test>" in str(err.value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("HttpPort", -5),
        ("HttpPort", 70000),
        ("StableAge", -1),
        ("StorageCompressionLevel", 0),
        ("StorageCompressionLevel", 10),
        ("MaximumPduLength", 1024),
        ("UserMetadata", {"Sample": 5}),
        ("MaximumStorageMode", "Delete"),
        ("StorageAccessOnFind", "always"),
        ("DicomAet", "ABCDEFGHIJKLMNOPQ"),
        ("DicomAet", ""),
    ],
)
def test_value_out_of_range_is_refused(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(DicomVaultError) as err:
        load_text(tmp_path, json.dumps({key: value}))
    assert err.value.code is ErrorCode.PARAMETER_OUT_OF_RANGE
    assert f'"{key}"' in str(err.value)


def test_empty_aet_is_fine_without_dicom_server(tmp_path: Path) -> None:
    # Orthanc only checks the AET when it starts its DICOM server.
    config = load_text(tmp_path, '{"DicomAet": "", "DicomServerEnabled": false}')
    assert config.dicom_aet == ""


def test_typed_values(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        """{
          "StorageCompression": true, "StorageCompressionLevel": 9, "MaximumUploadSize": 0,
          "AcceptedTransferSyntaxes": "1.2.840.10008.1.2",
          "UserMetadata": {"Sample": 1024},
          "OrthancPeers": {"peer": ["http://127.0.0.1:8043/", "alice", "pw"]},
          "AwsS3Storage": {"BucketName": "b", "Region": "eu-west-1"},
          "PostgreSQL": {"EnableIndex": true, "Host": "db"}
        }""",
    )
    assert config.storage_compression and config.storage_compression_level == 9
    assert config.maximum_upload_size == 0
    assert config.accepted_transfer_syntaxes == ("1.2.840.10008.1.2",)  # one string is accepted
    assert config.user_metadata == {"Sample": 1024}
    assert config.orthanc_peers["peer"] == ("http://127.0.0.1:8043/", "alice", "pw")
    assert config.aws_s3_storage == {"BucketName": "b", "Region": "eu-west-1"}
    assert config.postgresql is not None and config.postgresql["Host"] == "db"


# --- Paths ------------------------------------------------------------------------------------


def test_relative_paths_follow_the_configuration_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Observed with Orthanc 1.10.1: relative paths are taken from the configuration file's folder,
    # not from the working directory.
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(tmp_path / "conf" / "orthanc.json", '{"StorageDirectory": "Store", "TemporaryDirectory": "tmp"}')
    config = load_config(Path("..") / "conf" / "orthanc.json", env=NO_ENV)
    assert config.storage_directory.resolve() == path.parent / "Store"
    assert config.storage_directory.is_absolute()
    assert config.index_directory == config.storage_directory
    assert config.temporary_directory is not None
    assert config.temporary_directory.resolve() == path.parent / "tmp"
    assert config.path("server.pem").resolve() == path.parent / "server.pem"


def test_relative_paths_of_a_folder_follow_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    write(folder / "storage.json", '{"StorageDirectory": "Store", "IndexDirectory": "/abs/index"}')
    config = load_config(folder, env=NO_ENV)
    assert config.storage_directory == folder / "Store"
    assert config.index_directory == Path("/abs/index")
    assert config.base_directory == folder


def test_relative_paths_of_a_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_from_mapping({"StorageDirectory": "S"}).storage_directory == tmp_path / "S"
    other = tmp_path / "other"
    config = config_from_mapping({"StorageDirectory": "S"}, base_directory=other)
    assert config.storage_directory == other / "S"


# --- Authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("remote", "explicit", "users", "enabled", "effective_users"),
    [
        # Observed with Orthanc 1.10.1 (HTTP 401/200 with and without orthanc:orthanc).
        (False, None, {}, False, {}),
        (True, None, {}, True, {"orthanc": "orthanc"}),
        (True, None, {"alice": "pw"}, True, {"alice": "pw"}),
        (True, True, {}, True, {"orthanc": "orthanc"}),
        (False, True, {}, True, {}),  # every request refused: no default user without remote access
        (True, False, {}, False, {}),
        (False, False, {"alice": "pw"}, False, {"alice": "pw"}),
        (False, None, {"alice": "pw"}, False, {"alice": "pw"}),
    ],
)
def test_authentication_effective_rule(
    remote: bool, explicit: bool | None, users: dict[str, str], enabled: bool, effective_users: dict[str, str]
) -> None:
    data: dict[str, Any] = {"RemoteAccessAllowed": remote, "RegisteredUsers": users}
    if explicit is not None:
        data["AuthenticationEnabled"] = explicit
    config = config_from_mapping(data, env=NO_ENV)
    assert config.authentication_enabled is enabled
    assert dict(config.registered_users) == effective_users
    assert config.is_http_server_secure is (enabled or not remote)


def test_default_user_is_announced_loudly(caplog: pytest.LogCaptureFixture) -> None:
    config_from_mapping({"RemoteAccessAllowed": True}, env=NO_ENV)
    assert any("INSECURE" in w for w in warnings_of(caplog))


# --- The table --------------------------------------------------------------------------------


def test_every_key_is_documented() -> None:
    docs = documented_keys()
    assert len(docs) == len(KEYS)  # no key listed twice
    for name, text in docs.items():
        assert text.strip(), f"{name} has no help text"
        assert text.strip()[-1] in ".)", f"help of {name} should be a sentence"


def test_every_config_field_comes_from_the_table() -> None:
    from_table = [k.field for k in KEYS if k.field]
    assert len(from_table) == len(set(from_table))
    computed = {"authentication_enabled", "raw", "source", "files", "base_directory"}
    assert {f.name for f in dataclasses.fields(Config)} == set(from_table) | computed


def _orthanc_binary() -> str | None:
    found = shutil.which("Orthanc")
    if found:
        return found
    return "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None


# Keys Orthanc 1.10.1 documents in its sample configuration only inside comments.
ORTHANC_COMMENTED_KEYS = [
    "TemporaryDirectory", "DeflatedTransferSyntaxAccepted", "JpegTransferSyntaxAccepted",
    "Jpeg2000TransferSyntaxAccepted", "JpegLosslessTransferSyntaxAccepted", "JpipTransferSyntaxAccepted",
    "Mpeg2TransferSyntaxAccepted", "RleTransferSyntaxAccepted", "Mpeg4TransferSyntaxAccepted",
    "H265TransferSyntaxAccepted", "SslCiphersAccepted", "AuthenticationEnabled", "DicomTlsCertificate",
    "DicomTlsPrivateKey", "DicomTlsTrustedCertificates", "Pkcs11", "Locale", "ExternalDictionaries",
    "IngestTranscoding", "DatabaseServerIdentifier",
]  # fmt: skip

# Where Orthanc's behaviour without the key differs from the value written in its sample file.
SAMPLE_VALUE_IS_NOT_THE_DEFAULT = {"Name", "IndexDirectory", "HttpTimeout"}


@pytest.fixture(scope="module")
def orthanc_sample() -> str:
    binary = _orthanc_binary()
    if binary is None:
        pytest.skip("the Orthanc binary is not installed")
    result = subprocess.run([binary, "--config=-"], capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


@pytest.mark.orthanc
def test_every_orthanc_key_is_known(orthanc_sample: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sample = json5.loads(orthanc_sample)
    assert len(sample) > 80
    unknown = [name for name in sample if name not in KEYS_BY_NAME]
    assert unknown == []
    for name in ORTHANC_COMMENTED_KEYS:
        assert f'"{name}"' in orthanc_sample
        assert name in KEYS_BY_NAME
    # The sample itself loads without any warning.
    path = write(tmp_path / "orthanc.json", orthanc_sample)
    with caplog.at_level(logging.INFO):
        config = load_config(path, env=NO_ENV)
    assert warnings_of(caplog) == []
    assert config.name == "MyOrthanc"
    assert config.storage_directory == tmp_path / "OrthancStorage"


@pytest.mark.orthanc
def test_defaults_match_orthanc(orthanc_sample: str) -> None:
    sample = json5.loads(orthanc_sample)
    different = {
        name: (value, KEYS_BY_NAME[name].default_as_json())
        for name, value in sample.items()
        if value != KEYS_BY_NAME[name].default_as_json()
    }
    assert set(different) == SAMPLE_VALUE_IS_NOT_THE_DEFAULT, different
