"""Who is asking (auth.py): the token file of hashed tokens, `threatqa token add`, and the header roles."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from threatqa.api import create_app
from threatqa.auth import add_token, load_tokens, request_access, token_digest
from threatqa.cli import main
from threatqa.config import Settings
from threatqa.errors import ConfigError
from threatqa.policy import Access

DIGEST = token_digest("alice-token")


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tokens.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _entry(user: str = "alice", digest: str = DIGEST, extra: str = 'groups = ["red"]\nroles = ["auditor"]\n') -> str:
    return f'[[token]]\nuser = "{user}"\n{extra}sha256 = "{digest}"\n\n'


def test_a_token_file_maps_each_token_to_its_user_groups_and_roles(tmp_path: Path) -> None:
    bob = token_digest("bob-token")
    tokens = load_tokens(_file(tmp_path, _entry() + _entry("bob", bob, extra="")))
    assert tokens.access("alice-token") == Access.of("alice", ["red"], ["auditor"])
    assert tokens.access("bob-token") == Access.of("bob", [], ["reader"])  # no roles given: reader
    assert tokens.access("carol-token") is None and tokens.access("") is None
    assert tokens.access(DIGEST) is None  # the stored digest is no token


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[token]\nuser = 1", "is not valid TOML"),
        (_entry() + _entry("bob"), "token 2 has the same sha256 as an earlier one (user 'alice')"),
        (_entry(extra='roles = ["boss"]\n'), "unknown role(s) 'boss'; valid: reader, auditor, admin"),
        (_entry(extra="roles = []\n"), "no role given; valid: reader, auditor, admin"),
        (_entry(digest="not-a-digest"), "sha256 must be 64 lowercase hex characters"),
        (_entry(user=""), "user must be a non-empty string"),
        ('[[token]]\nuser = "alice"\n', "needs user and sha256"),
        (_entry(extra='group = ["red"]\n'), "needs user and sha256, may have groups and roles"),
        (_entry(extra='groups = "red"\n'), "groups must be a list of strings"),
        ('[[tokens]]\nuser = "a"\n', "unknown key(s) tokens; valid: token"),
    ],
)
def test_a_bad_token_file_is_a_clear_error(tmp_path: Path, text: str, problem: str) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_tokens(path)
    assert problem in str(raised.value) and str(path) in str(raised.value)


def test_a_bad_or_missing_token_file_stops_the_server_at_start(tmp_path: Path) -> None:
    missing = Settings.load(auth="token", auth_tokens=str(tmp_path / "nowhere.toml"))
    with pytest.raises(ConfigError, match=r"nowhere\.toml does not exist"):
        create_app(missing, engine=object())  # type: ignore[arg-type]
    bad = Settings.load(auth="token", auth_tokens=str(_file(tmp_path, _entry() + _entry())))
    with pytest.raises(ConfigError, match="same sha256"):
        create_app(bad, engine=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="THREATQA_AUTH_TOKEN or THREATQA_AUTH_TOKENS"):
        create_app(Settings.load(auth="token"), engine=object())  # type: ignore[arg-type]


def test_add_token_stores_only_the_hash_privately(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "tokens.toml"
    first = add_token(path, "alice", ["red", "blue"], ["reader", "admin"])
    second = add_token(path, "bob")
    text = path.read_text(encoding="utf-8")
    assert first not in text and second not in text and token_digest(first) in text
    assert len(first) >= 43 and first != second  # 32 random bytes, URL-safe
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens = load_tokens(path)
    assert tokens.access(first) == Access.of("alice", ["red", "blue"], ["reader", "admin"])
    assert tokens.access(second) == Access.of("bob")
    assert [p.name for p in path.parent.iterdir()] == ["tokens.toml"]  # no temporary file left behind


def test_add_token_refuses_bad_input_and_leaves_a_bad_file_alone(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown role"):
        add_token(tmp_path / "t.toml", "alice", roles=["root"])
    with pytest.raises(ConfigError, match="non-empty name"):
        add_token(tmp_path / "t.toml", "  ")
    assert not (tmp_path / "t.toml").exists()
    bad = _file(tmp_path, "[[token]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        add_token(bad, "alice")
    assert bad.read_text(encoding="utf-8") == "[[token]\n"


def test_token_add_command_prints_the_token_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tokens.toml"
    monkeypatch.setenv("THREATQA_AUTH_TOKENS", str(path))
    assert main(["token", "add", "alice", "--groups", "red, blue", "--roles", "auditor"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert load_tokens(path).access(token) == Access.of("alice", ["red", "blue"], ["auditor"])
    assert token not in path.read_text(encoding="utf-8") and "only its SHA-256 is kept" in err
    monkeypatch.delenv("THREATQA_AUTH_TOKENS")
    assert main(["token", "add", "bob"]) == 1
    assert "--file PATH or THREATQA_AUTH_TOKENS" in capsys.readouterr().err


def test_header_roles_from_the_proxy_unknown_ones_ignored() -> None:
    settings = Settings.load(auth="header")

    def roles(value: str | None) -> set[str]:
        headers = {"X-Forwarded-User": "alice"} | ({"X-Forwarded-Roles": value} if value is not None else {})
        return set(request_access(settings, headers).roles)

    assert roles(None) == roles("") == roles("portal-admin, editor") == {"reader"}
    assert roles("auditor") == {"auditor"}
    assert roles(" admin , portal-admin,reader") == {"admin", "reader"}
    assert roles("Admin") == {"reader"}  # role names are exact
    renamed = Settings.load(auth="header", auth_roles_header="X-Roles")
    assert request_access(renamed, {"X-Forwarded-User": "a", "X-Roles": "admin"}).roles == {"admin"}


def test_who_is_asking_with_a_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    token = add_token(path, "alice", ["red"], ["auditor"])
    settings = Settings.load(auth="token", auth_token="shared", auth_tokens=str(path))
    assert request_access(settings, {"authorization": f"Bearer {token}"}) == Access.of("alice", ["red"], ["auditor"])
    assert request_access(settings, {"cookie": f"threatqa_token={token}"}).user == "alice"
    # a wrong bearer token beside a valid cookie: the cookie decides (the middleware let it in for the cookie)
    both = {"authorization": "Bearer wrong", "cookie": f"threatqa_token={token}"}
    assert request_access(settings, both).user == "alice"
    assert request_access(settings, {"authorization": "Bearer shared"}) == Access()  # no name, reader, no groups
    # headers of the header mode mean nothing under token auth
    assert request_access(settings, {"X-Forwarded-User": "mallory", "X-Forwarded-Roles": "admin"}) == Access()
