"""Commissioning: the unit's keys and certificate, a C-ECHO to every destination, optionally a
test object end to end, and a report to print, sign and file.

The report holds identities, fingerprints and results only: no patient data (the test object
is synthetic, its patient "WAYSTATION^TEST")."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.firstboot import config_fingerprint
from appliance.hubcheck import check_hub
from appliance.tls import certificate_fingerprint, ensure_certificate
from router import __version__
from router.config import load_config
from router.config.model import Config, HubDestination, StowDestination
from router.control.echo import check_stow
from router.delivery.dimse import Timeouts, echo
from router.spool import keys
from router.spool.crypto import choose_cipher
from router.spool.fsio import atomic_write, make_dirs

REPORT_DIR = "commissioning"


@dataclass
class TestResult:
    """One commissioning test."""

    name: str
    passed: bool
    detail: str
    started_at: float
    finished_at: float


@dataclass
class Report:
    """Everything the commissioning report shows."""

    unit_name: str
    ae_title: str
    listen: str
    hostname: str
    version: str
    config_fingerprint: str
    key_fingerprint: str
    cipher: str
    certificate_fingerprint: str
    created_at: float
    tests: list[TestResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every test passed."""
        return all(t.passed for t in self.tests)


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(at))


def commission(
    config_path: Path,
    *,
    test_object: Callable[[Config], tuple[bool, str]] | None = None,
) -> Report:
    """Commission the unit configured in ``config_path``; writes and returns the report."""
    config = load_config(config_path)
    cipher = choose_cipher(config.spool.cipher)
    # The same key file the router uses: created here if the router has not run yet.
    keyring = keys.load_or_create(config.spool.resolved_key_file, cipher)
    cert = ensure_certificate(
        config.state_dir / "tls", config.unit.name, [socket.gethostname(), config.ingest.host]
    )
    report = Report(
        unit_name=config.unit.name,
        ae_title=config.unit.ae_title,
        listen=config.ingest.listen,
        hostname=socket.gethostname(),
        version=__version__,
        config_fingerprint=config_fingerprint(config_path.read_bytes()),
        key_fingerprint=keys.fingerprint(keyring),
        cipher=cipher,
        certificate_fingerprint=certificate_fingerprint(cert),
        created_at=time.time(),
    )
    timeouts = Timeouts(
        connect=config.delivery.connect_timeout, response_base=config.delivery.response_timeout
    )
    for destination in config.destinations:
        if isinstance(destination, HubDestination):
            # A hub is not a DICOM peer: check it answers and accepts this unit's token.
            started = time.time()
            checked = check_hub(destination, timeout=config.delivery.connect_timeout + 10)
            report.tests.append(
                TestResult(
                    f"hub {destination.name} ({destination.url})",
                    checked.passed,
                    checked.detail,
                    started,
                    time.time(),
                )
            )
            continue
        if isinstance(destination, StowDestination):
            # Not a DICOM peer: reach it as delivery will (TLS, credentials), storing nothing.
            started = time.time()
            tested = check_stow(destination, timeouts=timeouts)
            report.tests.append(
                TestResult(
                    f"STOW-RS {destination.name} ({destination.url})",
                    tested.ok,
                    tested.message,
                    started,
                    time.time(),
                )
            )
            continue
        started = time.time()
        result = echo(destination, config.unit.ae_title, timeouts)
        where = f"{destination.ae_title}@{destination.host}:{destination.port}"
        detail = (
            f"answered in {result.elapsed * 1000:.0f} ms"
            if result.ok
            else f"no success: {result.outcome.kind}"
            + (f" status 0x{result.status:04X}" if result.status is not None else "")
            + (f" ({result.outcome.detail})" if result.outcome.detail else "")
        )
        report.tests.append(
            TestResult(
                f"C-ECHO {destination.name} ({where})", result.ok, detail, started, time.time()
            )
        )
    if test_object is not None:
        started = time.time()
        passed, detail = test_object(config)
        report.tests.append(
            TestResult("test object end to end", passed, detail, started, time.time())
        )
    save(report, config.state_dir / REPORT_DIR)
    return report


def save(report: Report, directory: Path) -> None:
    """Write report.json, report.txt and report.html (atomically each)."""
    make_dirs(directory, mode=0o750)
    atomic_write(directory / "report.json", json.dumps(asdict(report), indent=2).encode(), 0o640)
    atomic_write(directory / "report.txt", render_text(report).encode(), 0o640)
    atomic_write(directory / "report.html", render_html(report).encode(), 0o640)


def load(directory: Path) -> Report:
    """The last commissioning report saved in ``directory``."""
    document = json.loads((directory / "report.json").read_text(encoding="utf-8"))
    tests = [TestResult(**t) for t in document.pop("tests")]
    return Report(**document, tests=tests)


def _identity(report: Report) -> list[tuple[str, str]]:
    return [
        ("Unit name", report.unit_name),
        ("AE title", report.ae_title),
        ("Listens on", report.listen),
        ("Host name", report.hostname),
        ("Software version", f"waystation {report.version}"),
        ("Configuration fingerprint (SHA-256)", report.config_fingerprint),
        ("Spool key fingerprint", report.key_fingerprint),
        ("Spool cipher", report.cipher),
        ("TLS certificate fingerprint (SHA-256)", report.certificate_fingerprint),
        ("Commissioned", _when(report.created_at)),
    ]


def render_text(report: Report) -> str:
    """The plain-text report."""
    lines = ["WAYSTATION COMMISSIONING REPORT", "=" * 31, ""]
    width = max(len(k) for k, _ in _identity(report))
    lines += [f"{k:<{width}}  {v}" for k, v in _identity(report)]
    lines += ["", "Tests", "-----"]
    if not report.tests:
        lines.append("(no destinations configured)")
    for t in report.tests:
        mark = "PASS" if t.passed else "FAIL"
        lines.append(f"[{mark}] {t.name}: {t.detail}")
        lines.append(f"       {_when(t.started_at)} .. {_when(t.finished_at)}")
    verdict = "ALL TESTS PASSED" if report.passed else "SOME TESTS FAILED: do not put in service"
    lines += ["", f"Result: {verdict}", ""]
    lines += [
        "Commissioned by (name): ______________________  Signature: ______________",
        "Date: ____________  Site: __________________________________________",
        "",
    ]
    return "\n".join(lines)


def render_html(report: Report) -> str:
    """The printable HTML report (one A4 page, no scripts, no external files)."""
    from html import escape

    rows = "".join(
        f"<tr><th>{escape(k)}</th><td><code>{escape(v)}</code></td></tr>"
        for k, v in _identity(report)
    )
    tests = (
        "".join(
            f'<tr class="{"pass" if t.passed else "fail"}">'
            f"<td>{'PASS' if t.passed else 'FAIL'}</td>"
            f"<td>{escape(t.name)}</td><td>{escape(t.detail)}</td>"
            f"<td>{escape(_when(t.started_at))}<br>{escape(_when(t.finished_at))}</td></tr>"
            for t in report.tests
        )
        or '<tr><td colspan="4">(no destinations configured)</td></tr>'
    )
    verdict = "All tests passed" if report.passed else "Some tests failed: do not put in service"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Waystation commissioning report: {escape(report.unit_name)}</title>
<style>
 body {{ font-family: sans-serif; margin: 2em; }}
 table {{ border-collapse: collapse; width: 100%; margin-bottom: 1.5em; }}
 th, td {{ border: 1px solid #444; padding: 4px 8px; text-align: left; vertical-align: top; }}
 tr.fail td:first-child {{ font-weight: bold; }}
 .sign {{ margin-top: 3em; }} .sign div {{ margin: 2em 0 0; border-top: 1px solid #000;
   width: 60%; padding-top: 2px; }}
 @page {{ size: A4; margin: 15mm; }}
</style></head><body>
<h1>Waystation commissioning report</h1>
<table>{rows}</table>
<h2>Tests</h2>
<table><tr><th>Result</th><th>Test</th><th>Detail</th><th>Time</th></tr>{tests}</table>
<p><strong>Result: {escape(verdict)}</strong></p>
<div class="sign"><div>Commissioned by (name)</div><div>Signature</div><div>Date and site</div>
</div></body></html>
"""
