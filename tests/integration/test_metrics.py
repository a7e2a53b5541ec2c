"""The admin endpoint: /metrics in Prometheus text format (checked by a strict
parser), /healthz, and that the figures follow what happened."""

import re
import unittest
import urllib.request

from harness import Env, PrivilegedTestCase, free_port

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
SAMPLE = re.compile(rf"^({NAME})(\{{{LABEL}(?:,{LABEL})*\}})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$")


def parse_prometheus(text):
    """Strict text-format 0.0.4 parser: returns {family: {"type": t, "samples": [(name, labels, value)]}}."""
    families, current = {}, None
    assert text.endswith("\n"), "exposition must end with a newline"
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split()[2]
            assert re.fullmatch(NAME, name), line
            assert name not in families, f"duplicate family {name}"
            families[name] = {"type": None, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            assert name == current, f"TYPE for {name} outside its HELP block"
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name]["type"] = typ
        elif line.startswith("#"):
            continue
        else:
            m = SAMPLE.match(line)
            assert m, f"malformed sample line: {line!r}"
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            base = re.sub(r"_(bucket|sum|count)$", "", name) if families.get(current, {}).get("type") == "histogram" else name
            assert base == current, f"sample {name} outside its family {current}"
            pairs = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', labels))
            families[current]["samples"].append((name, pairs, value))
    for name, fam in families.items():
        assert fam["type"], f"{name} has no TYPE"
        if fam["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} should end in _total"
            assert all(v >= 0 for _, _, v in fam["samples"])
        if fam["type"] == "histogram":
            buckets = [(float(l["le"]) if l["le"] != "+Inf" else float("inf"), v)
                       for n, l, v in fam["samples"] if n.endswith("_bucket")]
            assert buckets and buckets[-1][0] == float("inf"), f"{name}: no +Inf bucket"
            assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), f"{name}: buckets not cumulative"
            count = [v for n, _, v in fam["samples"] if n.endswith("_count")][0]
            assert buckets[-1][1] == count, f"{name}: +Inf bucket != count"
    return families


class MetricsTest(PrivilegedTestCase):
    def test_metrics_and_healthz(self):
        admin_port = free_port()
        with Env(rules={"default": "allow", "list": [
                {"name": "no-delete", "method": "DELETE", "path": "/api/atlas/v2/**", "action": "block"}]},
                 config_extra={"listen": {"admin": f"127.0.0.1:{admin_port}"}}) as env:
            env.start_daemon()
            for _ in range(3):
                self.assertEqual(env.curl("/api/atlas/v2/groups", name="metric-bot")[0], 200)
            self.assertEqual(env.curl("/api/atlas/v2/groups/x", method="DELETE", name="metric-bot")[0], 403)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/healthz", timeout=5) as r:
                self.assertEqual(r.status, 200)
                self.assertEqual(r.read(), b"ok\n")
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as r:
                self.assertTrue(r.headers["Content-Type"].startswith("text/plain; version=0.0.4"))
                fams = parse_prometheus(r.read().decode())
            req = {(l["agent"], l["decision"], l["status"]): v for _, l, v in fams["atlasgate_requests_total"]["samples"]}
            self.assertEqual(req[("metric-bot", "allow", "200")], 3)
            self.assertEqual(req[("metric-bot", "block", "403")], 1)
            count = [v for n, _, v in fams["atlasgate_request_duration_seconds"]["samples"] if n.endswith("_count")][0]
            self.assertEqual(count, 4)
            up = [v for n, _, v in fams["atlasgate_upstream_duration_seconds"]["samples"] if n.endswith("_count")][0]
            self.assertEqual(up, 3)
            ev = {l["event"]: v for _, l, v in fams["atlasgate_bpf_events_total"]["samples"]}
            self.assertGreaterEqual(ev["redirected4"], 4)
            tok = {l["result"]: v for _, l, v in fams["atlasgate_token_refreshes_total"]["samples"]}
            self.assertEqual(tok["ok"], 1)
            self.assertEqual(tok["error"], 0)
            for fam in ("atlasgate_flows_refused_total", "atlasgate_upstream_pool_idle", "atlasgate_connections_live"):
                self.assertIn(fam, fams)
            # Only the documented names, all prefixed.
            self.assertTrue(all(n.startswith("atlasgate_") for n in fams))
            with self.assertRaises(urllib.error.HTTPError) as cm:
                urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/nope", timeout=5)
            self.assertEqual(cm.exception.code, 404)


class ParserSelfTest(unittest.TestCase):
    """The strict parser must reject what Prometheus rejects."""

    def test_rejects_malformed(self):
        good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 1\n"
        parse_prometheus(good)
        for bad in (good.replace("a_total{", "a-total{"), good.replace('"v"', "v"), good[:-1],
                    "# HELP h x\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                    "# HELP c x\n# TYPE c counter\nc 1\n"):
            with self.assertRaises(AssertionError):
                parse_prometheus(bad)


if __name__ == "__main__":
    unittest.main(verbosity=2)
