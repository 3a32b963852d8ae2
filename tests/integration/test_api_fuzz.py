"""Schemathesis against the OpenAPI document of a running service: 0 server errors.

The demo venue (every subsystem, 35 simulated devices on real sockets) runs as ``flytower run``
with access control on; schemathesis (``st run``) reads ``/api/v1/openapi.json`` and sends every
operation valid and invalid requests (its examples, coverage and fuzzing phases), signed in
with an admin token so that requests reach the routes' own validation. Every check runs
(``CHECKS``): no server error (a 5xx answer or a connection dropped), and the document tells
the truth: every status code, content type, body and header an answer has is documented, a
request that breaks the schema is refused, one without a credential is refused, and a 405
names the methods that are there. A failure is reported with the request that reproduces it.

Not checked: ``positive_data_acceptance`` (a request the schema allows is accepted). Some
rules are not in the schema: a cue list, axis or alarm named in a body must exist on this
node; an alarm is shelved with exactly one of ``until`` and ``duration_s``; a show file is
checked by its own parser (docs/interfaces/show-file.md). The stateful checks need links the
document does not declare.

``make test`` runs the fuzzing phase, 2 cases per operation, on a fixed seed; ``make fuzz``
runs the examples, coverage and fuzzing phases with 100 (FLYTOWER_FUZZ_PHASES,
FLYTOWER_FUZZ_EXAMPLES), and FLYTOWER_FUZZ_SEED picks another seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import stop_all
from tests.peers.demo import admin_token, demo_venue

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("FLYTOWER_FUZZ_EXAMPLES", "2"))


SEED = int(os.environ.get("FLYTOWER_FUZZ_SEED", "3382"))
# The coverage phase (every boundary value of every parameter) sends most of the requests:
# make fuzz runs it, make test the random phase only.
PHASES = os.environ.get("FLYTOWER_FUZZ_PHASES", "fuzzing")
ST = Path(sys.executable).with_name("st")
NOT_CHECKED = "positive_data_acceptance,use_after_free,ensure_resource_availability"


@pytest.mark.timeout(1800)
def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    demo = demo_venue(tmp_path / "demo")
    # The fuzzer sends far more than a console does: not the REST rate limit's business here.
    text = demo.venue.read_text()
    demo.venue.write_text(text.replace("[api]\n", "[api]\nrate_per_s = 100000\n", 1))
    token = admin_token(demo.venue)
    demo.start()
    try:
        args = [
            *("run", f"{demo.api}/api/v1/openapi.json", "--checks", "all"),
            *("--exclude-checks", NOT_CHECKED),
            *("-H", f"Authorization: Bearer {token}", "--max-examples", str(EXAMPLES)),
            *("--seed", str(SEED), "--workers", "2", "--request-timeout", "20"),
            *("--phases", PHASES, "--no-color"),
            *("--generation-database", "none", "--suppress-health-check", "all"),
        ]
        run = subprocess.run(
            [str(ST), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=1700,
        )
        exited = demo.proc.poll() if demo.proc is not None else None
    finally:
        assert demo.proc is not None
        stop_all([demo.proc])
    print(run.stdout[-6000:])
    assert run.returncode == 0, f"{run.stdout[-12000:]}\n{run.stderr[-3000:]}"
    assert exited is None, f"the service exited ({exited}) under the fuzzing: {demo.tail()}"
    assert "Exception in ASGI application" not in demo.log.read_text(errors="replace")
