"""Config: defaults in code, the shipped file equal to them, and clear errors naming the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mirror.config import Config, ScanConfig, load_config, parse_connect_to
from mirror.errors import ConfigError, ExitStatus

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_config_equals_defaults() -> None:
    """config.toml documents exactly the defaults built into the code."""
    assert Config() == load_config(ROOT / "config.toml")


def test_no_file_means_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config and without ./config.toml the defaults apply."""
    monkeypatch.chdir(tmp_path)
    assert Config() == load_config(None)


def test_cwd_config_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """./config.toml is read when no --config is given."""
    write(tmp_path, '[scan]\nraw = "all"\n')
    monkeypatch.chdir(tmp_path)
    assert "all" == load_config(None).scan.raw


def test_values_override(tmp_path: Path) -> None:
    """Keys override defaults and lists become tuples."""
    config = load_config(write(tmp_path, '[scan]\ninclude = ["*.txt"]\n[fetch]\njobs = 4\n'))
    assert (("*.txt",), 4) == (config.scan.include, config.fetch.jobs)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[scan]\nbogus = 1\n", "scan.bogus"),
        ("[nope]\nx = 1\n", "nope"),
        ('[scan]\nraw = "some"\n', "scan.raw"),
        ('[scan]\ninclude = "*.md"\n', "scan.include"),
        ("[scan]\ninclude = [1]\n", "scan.include"),
        ("[fetch]\njobs = 0\n", "fetch.jobs"),
        ("[fetch]\njobs = true\n", "fetch.jobs"),
        ('[fetch]\nsources = ["ftp"]\n', "fetch.sources"),
        ('[scan]\nwrappers = ["(unclosed"]\n', "scan.wrappers"),
        ('[scan]\nwrappers = ["^https://x/(?P<inner>.*)"]\n', "scan.wrappers"),
        ('[rewrite]\nbase_url = "/no-slash"\n', "rewrite.base_url"),
        ('[network]\nconnect_to = ["a:b"]\n', "network.connect_to"),
        ("scan = 3\n", "scan"),
    ],
)
def test_bad_key_or_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    """A bad key or value raises ConfigError naming section.key, exit status 2."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert key == info.value.key
    assert ExitStatus.USAGE == info.value.exit_status


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    """A file that is not TOML, or is missing, is a ConfigError naming the file."""
    bad = write(tmp_path, "[scan\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")


def test_frozen_and_replace() -> None:
    """The tree is frozen; overrides go through dataclasses.replace."""
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.scan.raw = "all"  # type: ignore[misc]
    changed = dataclasses.replace(config, scan=dataclasses.replace(config.scan, raw="all"))
    assert ("all", "paired") == (changed.scan.raw, ScanConfig().raw)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("a.example:80:127.0.0.1:8080", ("a.example", 80, "127.0.0.1", 8080)),
        ("A.Example:443:[::1]:8443", ("a.example", 443, "::1", 8443)),
        (":80:127.0.0.1:", ("", 80, "127.0.0.1", None)),
    ],
)
def test_connect_to_entries(entry: str, expected: tuple[str, int | None, str, int | None]) -> None:
    """connect_to entries parse as curl's HOST:PORT:HOST2:PORT2."""
    parsed = parse_connect_to(entry)
    assert expected == (parsed.host, parsed.port, parsed.to_host, parsed.to_port)
