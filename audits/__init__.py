"""The auditor: checks over a ledger, the audit runner and the certificate.

Typical use::

    from audits import run_audit, write_json, write_report

    cert = run_audit("runs/demo")          # a run directory or a ledger directory
    print(cert.summary_text())
    write_json(cert, "certificate.json")
    write_report(cert, "report.html")      # or .md, plots saved beside it

Each check is a small module returning a :class:`CheckResult`:
:mod:`audits.integrity`, :mod:`audits.configuration`, :mod:`audits.sampling`,
:mod:`audits.mechanics`, :mod:`audits.privacy`, :mod:`audits.replay`,
:mod:`audits.empirical` (canaries: an ε lower bound from the trained model).
Importing this package does not import JAX (replay imports it when it runs).
"""

from audits.certificate import SCHEMA_VERSION as SCHEMA_VERSION
from audits.certificate import VERDICTS as VERDICTS
from audits.certificate import Certificate as Certificate
from audits.certificate import write_json as write_json
from audits.check import CHECK_NAMES as CHECK_NAMES
from audits.check import STATUSES as STATUSES
from audits.check import CheckResult as CheckResult
from audits.report import write_report as write_report
from audits.runner import audit_ledger as audit_ledger
from audits.runner import run_audit as run_audit
