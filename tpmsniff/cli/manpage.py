r"""tpmsniff(1), generated from the argument parsers so it never drifts from --help.

`python -m tpmsniff.cli.manpage > docs/tpmsniff.1` (make man); a test keeps them in sync.
"""

from __future__ import annotations

import argparse

from .. import __version__

SECTIONS = r""".SH EXIT STATUS
.TP
.B 0
stopped cleanly; \fBcheck\fR: pass; \fBdecode\fR: decoded
.TP
.B 1
a check (live \-\-secret/\-\-require\-encrypted, or \fBcheck\fR) found a violation
.TP
.B 2
usage error, or (\fBdecode\fR/\fBcheck\fR) an input that cannot be read
.TP
.B 3
cannot start: listen address in use or not a socket, upstream unreachable, capture not writable
.TP
.B 4
outputs lost while running (worker died, disk full, write error), or a stop cut short
by a second SIGTERM/SIGINT (one log line gives the count not written)
.SH SIGNALS
.TP
.B SIGTERM, SIGINT
stop accepting, let requests outstanding get their responses (2 s at most), write FIN
records, wait until every relayed message is written to every output, exit. A second
one cuts that wait short: exit 4.
.TP
.B SIGHUP
start a new capture file at the configured path (logrotate \fIcreate\fR style).
.SH FILES
.TP
.I /etc/tpmsniff/NAME.env
settings of the systemd unit \fBtpmsniff@NAME.service\fR.
.TP
.I systemd/tpmsniff@.socket
socket activation: systemd listens for \fBtpmsniff@NAME.service\fR (see docs/deploy.md).
.TP
.I tpmsniff/wireshark/tpmsniff.lua
Wireshark post-dissector shipped with the package: the per-frame comments as
\fBtpmsniff.verdict\fR, \fBtpmsniff.session\fR, \fBtpmsniff.proof\fR,
\fBtpmsniff.recovered\fR and \fBtpmsniff.finding\fR fields; copy it, with
\fItpmsniff.colorfilters\fR, into Wireshark's personal plugin folder (see docs/pcapng.md).
.SH SEE ALSO
.BR swtpm (8),
.BR tshark (1),
.BR tpm2_unseal (1)
"""


def _esc(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in out.splitlines())


def _options(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for action in parser._actions:  # argparse has no public way to list its options
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        flags = ", ".join(f"\\fB{_esc(o)}\\fR" for o in action.option_strings)
        if action.nargs != 0:
            meta = action.metavar or (
                "{" + ",".join(action.choices) + "}" if action.choices else action.dest.upper()
            )
            flags += f" \\fI{_esc(str(meta))}\\fR"
        out += [".TP", flags, _esc(action.help or "")]
    return out


def render() -> str:
    from . import check as checkcmd
    from . import decode as decodecmd
    from . import extcap as extcapcmd
    from .daemon import build_parser

    main = build_parser()
    lines = [
        f'.TH TPMSNIFF 1 "" "tpmsniff {__version__}" "User Commands"',
        ".SH NAME",
        r"tpmsniff \- live TPM bus sniffing proxy for swtpm",
        ".SH SYNOPSIS",
        r"\fBtpmsniff\fR [\fB\-\-listen\fR \fIADDR\fR] "
        r"\fB\-\-upstream\fR \fIADDR\fR [\fIOPTIONS\fR]",
        ".br",
        r"\fBtpmsniff decode\fR \fIINPUT\fR... [\fIOPTIONS\fR]",
        ".br",
        r"\fBtpmsniff check\fR \fIINPUT\fR... [\fIOPTIONS\fR]",
        ".br",
        r"\fBtpmsniff extcap\fR [\fB\-\-install\fR [\fB\-\-user\fR]]",
        ".SH DESCRIPTION",
        _esc(main.description or ""),
        ".SH OPTIONS",
        *_options(main),
        ".SH DECODE",
        _esc(decodecmd.build_parser().description or ""),
        *_options(decodecmd.build_parser()),
        ".SH CHECK",
        _esc(checkcmd.build_parser().description or ""),
        *_options(checkcmd.build_parser()),
        ".SH EXTCAP",
        _esc(extcapcmd.build_parser().description or ""),
        *_options(extcapcmd.build_parser()),
        ".SH EXAMPLES",
        ".nf",
        _esc((main.epilog or "").split("exit codes:")[0].strip()),
        ".fi",
    ]
    return "\n".join(lines) + "\n" + SECTIONS


if __name__ == "__main__":
    print(render(), end="")
