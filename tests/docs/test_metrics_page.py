"""docs/operations/metrics.md lists every metric a daemon with hooks configured exposes
on /metrics, and no other."""

from __future__ import annotations

import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.plugins.daemon import ROOT

PAGE = ROOT / "docs" / "operations" / "metrics.md"


def documented() -> set[str]:
    rows = re.findall(r"(?m)^\| `(tusd_[a-z_]+)(?:\{[^}]*\})?` \|", PAGE.read_text(encoding="utf-8"))
    return set(rows)


def test_the_metrics_page_lists_every_metric_the_daemon_exposes(daemon_factory) -> None:  # type: ignore[no-untyped-def]
    # An endpoint nobody listens on: the hooks register their metrics at start-up.
    daemon = daemon_factory(env={"TUSD_HOOKS__HTTP__URL": "http://127.0.0.1:9/hooks"})
    with urllib.request.urlopen(daemon.root + "/metrics", timeout=10) as r:
        text = r.read().decode()
    exposed = set()
    for family in text_string_to_metric_families(text):
        if family.type == "gauge" and family.name.endswith("_created"):
            continue  # prometheus-client's creation time of a counter
        exposed.add(family.name + "_total" if family.type == "counter" else family.name)
    assert len(exposed) >= 16
    assert exposed - documented() == set(), "exposed but not on docs/operations/metrics.md"
    assert documented() - exposed == set(), "on docs/operations/metrics.md but not exposed"
