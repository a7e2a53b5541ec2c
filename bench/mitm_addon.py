"""Contender (d): mitmproxy addon that injects the service-account bearer token.

Loaded by `mitmdump --mode reverse:https://<upstream>:443 -s bench/mitm_addon.py`;
the token comes from the BENCH_TOKEN environment variable.
"""
import os

TOKEN = os.environ.get("BENCH_TOKEN", "x")


class InjectAuthorization:
    def request(self, flow):
        flow.request.headers["Authorization"] = "Bearer " + TOKEN
        flow.request.headers["Host"] = "cloud.mongodb.com"


addons = [InjectAuthorization()]
