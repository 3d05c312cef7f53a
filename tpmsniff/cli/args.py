"""Arguments shared by the daemon, `decode` and `check`: secrets, requirements, --auth."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used: the relay process does not need the checker
    from ..check.checker import Checker


def add_auth_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--auth",
        action="append",
        default=[],
        metavar="HANDLE=VALUE",
        help="authValue for weak-session decryption (text, or hex:…)",
    )


def add_secret_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="TEXT",
        help="a secret that must not cross the bus in clear (repeatable)",
    )
    p.add_argument("--secret-hex", action="append", default=[], metavar="HEX")
    p.add_argument("--secret-file", action="append", default=[], metavar="FILE")
    p.add_argument(
        "--require-encrypted",
        action="append",
        default=[],
        metavar="NAME[:command|:response]",
        help="fail unless every such message is ENCRYPTED (TPM2_CC name, "
        "case-insensitive; default direction: the one the name implies)",
    )
    p.add_argument(
        "--sensitive",
        action="store_true",
        help="fail on every sensitive value an observer could read (sealed data, "
        "authValues, private keys; docs/verdicts.md), no secret needed",
    )
    p.add_argument(
        "--sensitive-nv",
        action="store_true",
        help="with --sensitive: NV_Write/NV_Read data are sensitive too",
    )
    p.add_argument(
        "--sensitive-random",
        action="store_true",
        help="with --sensitive: GetRandom output is sensitive too",
    )
    p.add_argument(
        "--allow-weak",
        action="store_true",
        help="count WEAK (unsalted, unbound) encryption as encrypted",
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="do not fail when no TPM message, or no required command, was seen",
    )
    add_auth_arg(p)


def build_checker(args: argparse.Namespace) -> tuple[Checker, dict[int, bytes]]:
    """Raises ValueError with a one-line message on bad arguments."""
    from ..check.checker import Checker
    from ..check.requirements import Requirement
    from ..check.secrets import Secret
    from ..check.sensitive import SensitivePolicy
    from ..codec.sessions import parse_auth

    values = [s.encode() for s in args.secret]
    for i, h in enumerate(args.secret_hex, 1):
        try:
            values.append(bytes.fromhex(h))
        except ValueError:  # never echo the value: it is a secret
            raise ValueError(f"--secret-hex #{i}: not hex") from None
    for fname in args.secret_file:
        try:
            values.append(Path(fname).read_bytes())
        except OSError as exc:
            raise ValueError(f"--secret-file {fname}: {exc.strerror}") from None
    if any(not v for v in values):
        raise ValueError("a secret is empty")
    secrets = [Secret(v, n) for n, v in enumerate(values, 1)]
    requires = [Requirement.parse(r) for r in args.require_encrypted]
    auth = dict(parse_auth(a) for a in args.auth)
    checker = Checker(
        secrets,
        requires,
        allow_weak=args.allow_weak,
        allow_empty=args.allow_empty,
        sensitive=SensitivePolicy(nv=args.sensitive_nv, random=args.sensitive_random)
        if args.sensitive or args.sensitive_nv or args.sensitive_random
        else None,
    )
    return checker, auth


def checker_wanted(args: argparse.Namespace) -> bool:
    """Whether any check option was given (secrets, --sensitive, --require-encrypted)."""
    return bool(
        args.secret
        or args.secret_hex
        or args.secret_file
        or args.require_encrypted
        or args.sensitive
        or args.sensitive_nv
        or args.sensitive_random
    )
