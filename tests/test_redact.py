"""No secret in anything the gateway prints, in any length: ``redact()`` and the real CLI with a long secret.

The rule is the one of responses (SPEC §4): the whole value, URL- or JSON-encoded too, and any fragment of 8 or
more of its first or last characters.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from cli_support import PYTHON_M, clean_env, free_port, make_project, run_cli

from gateway.secrets import redact

R = "[REDACTED]"
_rng = random.Random("redact")
# 300 characters, with the characters URL-encoding changes: its encoded forms differ from it
LONG = "sk-live-" + "".join(_rng.choice(string.ascii_letters + string.digits + "+/=") for _ in range(292))


def leaks(text: str, secret: str = LONG) -> list[str]:
    """Every form (raw, URL-encoded, JSON) of a fragment of 8+ first or last characters of ``secret`` in ``text``."""
    found = []
    for k in range(8, len(secret) + 1):
        for piece in {secret[:k], secret[-k:]}:
            for form in {piece, quote(piece, safe=""), quote_plus(piece), json.dumps(piece)[1:-1]}:
                if form in text:
                    found.append(form)
    return found


# -- redact() ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quoted", [
    LONG,
    LONG[:200],  # an error that quotes the value cut short
    LONG[:8],
    LONG[-40:],
    LONG[-8:],
    quote(LONG, safe=""),
    quote_plus(LONG),
    quote(LONG, safe="")[:100],
    json.dumps(LONG)[1:-1].replace("/", "\\/"),
], ids=["whole", "first-200", "first-8", "last-40", "last-8", "quote", "quote_plus", "quoted-first-100", "json"])
def test_redact_removes_every_form_and_fragment(quoted):
    text = f"failed to import: ValueError: token {quoted!r} rejected (line 3)"
    clean = redact(text, {LONG})
    assert R in clean
    assert not leaks(clean), clean
    assert clean.startswith("failed to import: ValueError: token ") and clean.endswith(" rejected (line 3)")


def test_redact_keeps_what_is_not_a_secret():
    assert redact(f"short {LONG[:7]} middle {LONG[100:140]}", {LONG}) == f"short {LONG[:7]} middle {LONG[100:140]}"
    assert redact("nothing here", set()) == "nothing here"
    assert redact("abc and abcdef-long", {"abc", "abcdef-long"}) == f"{R} and {R}"


def test_a_message_cut_to_a_width_after_the_secret_began_leaks_nothing():
    message = f"error: token {LONG} was rejected"
    for width in range(10, len(message), 7):  # wherever a line is cut, what is left of the secret is a prefix
        assert not leaks(redact(message[:width], {LONG})), width


# -- the real CLI ------------------------------------------------------------------------------------------------

CONFIG = """\
server:
  host: {host}
upstreams:
  weather:
    url: https://api.openweathermap.org/data/2.5
    inject:
      query: {{ appid: "${{OPENWEATHER_KEY}}" }}
"""
QUOTING = {
    "whole.py": 'import os\nraise RuntimeError("bad key " + os.environ["OPENWEATHER_KEY"])\n',
    "head.py": 'import os\nraise ValueError("token rejected: " + os.environ["OPENWEATHER_KEY"][:200] + "...")\n',
    "tail.py": 'import os\nraise KeyError("..." + os.environ["OPENWEATHER_KEY"][-40:])\n',
    "quoted.py": 'import os, urllib.parse\nraise ValueError(urllib.parse.quote(os.environ["OPENWEATHER_KEY"]))\n',
    "repr.py": 'import os\nraise ValueError(repr(os.environ["OPENWEATHER_KEY"])[:120])\n',
}


def test_check_prints_route_errors_that_quote_a_long_secret_without_any_of_it(tmp_path: Path):
    make_project(tmp_path, CONFIG.format(host="127.0.0.1"), QUOTING)
    result = run_cli(PYTHON_M, "check", cwd=tmp_path, env=clean_env(OPENWEATHER_KEY=LONG))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(QUOTING), result.stderr
    for name in QUOTING:
        assert any(f"routes/{name}: failed to import" in line for line in errors), name
    assert all(R in line for line in errors), errors
    assert not leaks(result.stdout + result.stderr), result.stderr


@pytest.mark.parametrize("secret", [LONG, "sk-live-SHORTER+host/key=9"], ids=["300-chars", "26-chars"])
def test_serve_with_a_secret_as_host_says_it_cannot_listen_without_printing_it(tmp_path: Path, secret: str):
    make_project(tmp_path, CONFIG.format(host='"${OPENWEATHER_KEY}"'))
    result = run_cli(PYTHON_M, "serve", "--port", str(free_port()), cwd=tmp_path,
                     env=clean_env(OPENWEATHER_KEY=secret))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot listen on {R}:"), result.stderr
    assert not leaks(result.stdout + result.stderr, secret), result.stderr
