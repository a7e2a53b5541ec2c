"""The console (listen.console) in a real browser: headless Chromium driven
by Selenium (Debian chromium, chromium-driver, python3-selenium), against
the real daemon, with agents going through the real redirect.

The attacks, and what must hold:

* the one-time sign-in link is one-time: a second use (a leaked link, a
  shoulder-surfed URL) gets 403; the session cookie is HttpOnly and
  SameSite=Strict, and every response carries the CSP that forbids inline
  scripts; misses are rate-limited, but never a valid link;
* a stolen cookie alone opens nothing: browsers send cookies to every port
  of 127.0.0.1, so any local process serving a page on another port gets the
  console's cookie (HttpOnly and SameSite do not help). Every API request,
  reads and the event stream included, must also carry the session's CSRF
  token, which only the console's own tab has: the sign-in redirect puts it
  in the URL fragment (/#csrf=...), which no server sees, and the page keeps
  it in that tab's sessionStorage. A tab opened by hand is not signed in;
* a session that has expired is refused (401) and the page says so, even
  with the cookie replayed by hand after the browser dropped it;
* CSRF: a state-changing POST without the session's own X-CSRF-Token (none,
  a wrong one, another session's), with a foreign Origin, or as a "simple"
  cross-site form post (text/plain), is refused and changes nothing: the
  held request stays held; an API request a browser marks as coming from
  another page (Sec-Fetch-Site: same-site, cross-site) is refused too;
* DNS rebinding: a page loaded under another name that resolves to the
  console (rebind.test -> 127.0.0.1 in Chromium's resolver), or any request
  with a forged Host, gets 421, whatever cookie it carries;
* agent-controlled strings (held bodies, request paths) are hostile: a
  <script>, an <img onerror>, an <svg onload> and a terminal escape render as
  inert text, invisible and bidi characters are spelled out (\\uXXXX), and a
  UTF-8 character across the preview's 512-byte cut leaves no garbage;
* an operator sees a held request within 1 s and decides it with a click: the
  agent gets Atlas' answer (allow) or 403 (deny, the stand-in never sees it);
  a card whose request went away stays in place, greyed, so the list does
  not move under the cursor, and a click on a card that just moved is
  ignored; the live view shows a block as it happens, without a reload.

Screenshots of each page go to $ATLASGATE_BUILD_DIR/console-screenshots/.

Missing browser tooling skips the tests, or fails them under
ATLASGATE_REQUIRE_PRIVILEGED=1 (scripts/install-deps installs it).

    cd tests/integration && sudo /usr/bin/python3 -m unittest -v test_console
"""

import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest

from harness import (BUILD, CLIENT_ID, CLIENT_SECRET, HOST, PROJECT_ID, DaemonTestCase, Env, free_port,
                     require_root, wait_for)
from test_rules import cluster_body, call, finish, pending_approvals, spawn, stop

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # require_browser() says so
    webdriver = None

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = os.path.join(BUILD, "console-screenshots")

API = "/api/atlas/v2"
CLUSTERS = f"{API}/groups/{PROJECT_ID}/clusters"
HOLD = {"name": "console-hold-clusters", "method": "POST", "path": "/api/atlas/v2/groups/{groupId}/clusters",
        "action": "approve", "timeout": 120}
BLOCK = {"name": "console-no-deletes", "method": "DELETE", "path": "/api/atlas/v2/**", "action": "block"}
RULES = {"default": "allow", "list": [HOLD, BLOCK]}

LINK = re.compile(r"http://127\.0\.0\.1:(\d+)/signin\?token=([A-Za-z0-9_-]+)")
TOKEN_KEY = "atlasgate.csrf"  # where the page keeps its CSRF token (sessionStorage, per tab)
NOT_SIGNED_IN = "This tab is not signed in \u2014 open a new link from `atlasgate console-url`"


def cookie_name(port):
    """The session cookie's name. Cookies are not per port: two consoles on
    127.0.0.1 would share one named atlasgate_session, so the daemon puts
    its port in the name."""
    return f"atlasgate_console_{port}"

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGES = ("live", "approvals", "agents", "rules", "credentials")

# A held body an agent writes for the operator's eyes: markup that runs if
# it reaches innerHTML, a terminal escape, invisible and bidi characters
# (that could hide or reorder text), then padding that puts the two bytes of
# an "é" on either side of the 512-byte preview's cut.
INVISIBLE = ("\u00ad\u061c\u180e\u200b\u200c\u200d\u200e\u200f\u2028\u2029\u202a\u202e\u2060\u2064"
             "\u2066\u2069\ufeff")
HOSTILE = (b'<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">\x1b[31m'
           + ("x" + "x".join(INVISIBLE) + "x").encode())
HOSTILE_BODY = HOSTILE + b"a" * (511 - len(HOSTILE)) + "\u00e9".encode() + b"-after-the-cut"
# Request paths with markup (curl sends < > = / as they are; a space must be %20).
SVG_PATHS = (f"{API}/groups/{PROJECT_ID}/clusters/<svg/onload=window.__pwned=3>",
             f"{API}/groups/{PROJECT_ID}/clusters/<svg%20onload=window.__pwned=4>")


def require_browser():
    """Skip (or fail under ATLASGATE_REQUIRE_PRIVILEGED=1) without Chromium, its driver or Selenium."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if webdriver is None:
        missing.append("selenium (python3-selenium) for /usr/bin/python3")
    if not missing:
        return
    reason = f"{' and '.join(missing)} not installed (scripts/install-deps installs them)"
    if os.environ.get("ATLASGATE_REQUIRE_PRIVILEGED") == "1":
        raise AssertionError(f"console browser test cannot run: {reason} (ATLASGATE_REQUIRE_PRIVILEGED=1)")
    print(f"SKIP: {reason}", file=sys.stderr)
    raise unittest.SkipTest(reason)


def waited(predicate, timeout, what, state):
    """wait_for, and on timeout what state() says then (the page as it is)."""
    try:
        return wait_for(predicate, timeout=timeout, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; now: {state()!r}") from None


def console_options(port, session="1h"):
    return {"listen": {"console": f"127.0.0.1:{port}", "console_session": session}}


def sign_in_link(env, port):
    """A fresh one-time link from `atlasgate console-url`: (url, token)."""
    p = env.cli("console-url")
    if p.returncode != 0:
        raise AssertionError(f"atlasgate console-url failed ({p.returncode}): {p.stderr}")
    m = LINK.search(p.stdout)
    if not m:
        raise AssertionError(f"no sign-in link in `atlasgate console-url`: {p.stdout!r}")
    if int(m.group(1)) != port:
        raise AssertionError(f"the link is for port {m.group(1)}, the console listens on {port}: {p.stdout!r}")
    if len(m.group(2)) != 43:
        raise AssertionError(f"token is {len(m.group(2))} characters, not 43: {m.group(0)}")
    return m.group(0), m.group(2)


# --------------------------------------------------------------------------
# the console over plain HTTP, as a script (or an attacker) would talk to it

class Reply:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return f"<{self.status} {dict(self.headers)} {self.body[:300]!r}>"


class Console:
    """HTTP requests to the console at 127.0.0.1:port (http.client: Host,
    Origin and cookies exactly as given, redirects not followed). A POST
    carries the console's own Origin, as the browser sends it from the
    console's page, unless origin says otherwise (None: no Origin). csrf is
    the X-CSRF-Token header (None: none), which every API request needs."""

    def __init__(self, env, port):
        self.env, self.port = env, port
        self.origin = f"http://127.0.0.1:{port}"
        self.cookie = cookie_name(port)

    def request(self, method, path, cookie=None, csrf=None, body=None, host=None, origin="own",
                content_type="application/json", headers=None):
        if origin == "own":
            origin = self.origin if method == "POST" else None
        sent = {"Host": host or f"127.0.0.1:{self.port}"}
        if cookie is not None:
            sent["Cookie"] = f"{self.cookie}={cookie}"
        if csrf is not None:
            sent["X-CSRF-Token"] = csrf
        if origin is not None:
            sent["Origin"] = origin
        data = None
        if method == "POST":
            data = body if isinstance(body, bytes) else json.dumps(body if body is not None else {}).encode()
            if content_type:
                sent["Content-Type"] = content_type
        sent.update(headers or {})
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request(method, path, body=data, headers=sent)
            r = c.getresponse()
            # An event stream that was answered does not end: its head is the answer.
            stream = r.status == 200 and (r.getheader("Content-Type") or "").startswith("text/event-stream")
            return Reply(r.status, r.headers, b"" if stream else r.read())
        finally:
            c.close()

    def signed_in(self, r):
        """The sign-in link's answer, checked: (session cookie, CSRF token).
        The token is only in the redirect's fragment, which a browser keeps
        to itself (no server sees it)."""
        if r.status != 303:
            raise AssertionError(f"sign-in link answered {r}")
        m = re.match(rf"{self.cookie}=([^;]+)", r.headers.get("Set-Cookie", ""))
        if not m:
            raise AssertionError(f"no {self.cookie} cookie in {r}")
        t = re.fullmatch(r"/#csrf=([A-Za-z0-9_-]{43})", r.headers.get("Location", ""))
        if not t:
            raise AssertionError(f"Location is not /#csrf=<43-character token>: {r}")
        return m.group(1), t.group(1)

    def sign_in(self):
        """Signs in with a fresh link, as a script would: (session cookie, CSRF token)."""
        link, _ = sign_in_link(self.env, self.port)
        return self.signed_in(self.request("GET", link[len(self.origin):]))


class HostilePage:
    """A local process's web page on another port of 127.0.0.1
    (http.server in a thread): it records every request it gets, the
    Cookie header included, and its page tries the console's API from the
    browser with whatever the browser attaches. stop() ends it."""

    def __init__(self, console_port, approval_id):
        self.requests = []
        self.reports = []
        page = (HOSTILE_PAGE.replace("@CONSOLE@", f"http://127.0.0.1:{console_port}")
                .replace("@ID@", str(approval_id)))
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _record(self, body=b""):
                outer.requests.append({"method": self.command, "path": self.path,
                                       "cookie": self.headers.get("Cookie"), "body": body})

            def do_GET(self):
                self._record()
                data = page.encode() if self.path == "/" else b"not here\n"
                self.send_response(200 if self.path == "/" else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8" if self.path == "/" else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._record(body)
                if self.path == "/report":
                    outer.reports.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, name="hostile-page", daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# What the hostile page does in the operator's browser: read the session
# (which used to hand out the CSRF token), open the event stream, approve
# the held request with a form-like POST, each with the browser's cookie;
# then it reports what it could see.
HOSTILE_PAGE = """<!doctype html><title>hostile</title><script>
(async () => {
  const C = '@CONSOLE@', out = {};
  try {
    const r = await fetch(C + '/api/v1/session', {credentials: 'include'});
    out.session = 'read ' + r.status + ' ' + await r.text();
  } catch (e) { out.session = 'unreadable'; }
  try {
    await fetch(C + '/api/v1/approvals/@ID@/allow', {method: 'POST', mode: 'no-cors', credentials: 'include',
      headers: {'Content-Type': 'text/plain'}, body: '{}'});
    out.allow = 'answered (opaque)';
  } catch (e) { out.allow = 'failed: ' + e; }
  out.stream = await new Promise((done) => {
    const es = new EventSource(C + '/api/v1/events', {withCredentials: true});
    es.onopen = () => { es.close(); done('open'); };
    es.onerror = () => { es.close(); done('refused'); };
    setTimeout(() => { es.close(); done('timeout'); }, 5000);
  });
  await fetch('/report', {method: 'POST', body: JSON.stringify(out)});
})();
</script>"""


# --------------------------------------------------------------------------
# the browser

class Browser:
    """Headless Chromium with a fresh profile (removed by close())."""

    def __init__(self, args=()):
        self.dir = tempfile.mkdtemp(prefix="atlasgate-it-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                  f"--user-data-dir={os.path.join(self.dir, 'profile')}", *args):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # HOME and XDG dirs in the temp dir too: nothing (crash reports, caches) lands in root's home.
        home = {k: os.path.join(self.dir, d) for k, d in (("HOME", "home"), ("XDG_CONFIG_HOME", "home/.config"),
                                                          ("XDG_CACHE_HOME", "home/.cache"))}
        self.service = Service(CHROMEDRIVER, log_path=os.path.join(self.dir, "chromedriver.log"),
                               env=dict(os.environ, **home))
        try:
            self.driver = webdriver.Chrome(service=self.service, options=opts)
        except BaseException:
            self._end_driver_process()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(30)
        self.log = []

    def _end_driver_process(self):
        # chromedriver is ours (Service started it); Chromium is its child.
        proc = getattr(self.service, "process", None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except Exception:
                proc.kill()
                proc.wait()

    def close(self):
        try:
            self.driver.quit()
        finally:
            self._end_driver_process()
            shutil.rmtree(self.dir, ignore_errors=True)

    def console_log(self):
        """Everything the page logged so far (CSP violations included)."""
        self.log += [e["message"] for e in self.driver.get_log("browser")]
        return self.log

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def text(self, css):
        """textContent of the first element matching css, or None."""
        return self.js("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", css)

    def body_text(self):
        return self.js("return document.body ? document.body.innerText : '';")

    def click(self, css, timeout=5):
        """Clicks css (found again if the list was re-rendered under us)."""
        def clicked():
            try:
                els = self.driver.find_elements(By.CSS_SELECTOR, css)
                if not els:
                    return False
                els[0].click()
                return True
            except StaleElementReferenceException:
                return False
        wait_for(clicked, timeout=timeout, what=f"{css} to click")

    def show(self, page):
        """Follows the nav link to page; waits until only its section is visible."""
        self.click(f'nav a[data-page="{page}"]')
        want = {f"page-{p}": p != page for p in PAGES}

        def shown():
            got = self.js("const r = {}; for (const s of document.querySelectorAll('section[id^=\"page-\"]'))"
                          " r[s.id] = s.hidden; return r;")
            return got == want
        wait_for(shown, timeout=5, what=f"the {page} page alone to be shown")

    def approvals(self):
        """The approval cards, as the operator reads them."""
        return self.js(r"""
            return Array.from(document.querySelectorAll('#approvals div.approval[data-id]')).map(c => {
              const t = s => { const e = c.querySelector(s); return e ? e.textContent.trim() : null; };
              const body = c.querySelector('pre.body'), tr = c.querySelector('.truncated');
              return {id: c.dataset.id, agent: t('.agent'), method: t('.method'), host: t('.host'),
                      path: t('.path'), rule: t('.rule'), waiting: t('.waiting'),
                      body: body ? body.textContent : null, truncated: t('.truncated'), error: t('.error'),
                      truncated_visible: !!tr && !tr.hidden && tr.getClientRects().length > 0};
            });""")

    def decisions(self):
        """The live table's rows, newest first."""
        return self.js(r"""
            return Array.from(document.querySelectorAll('#decisions tbody tr')).map(r => {
              const t = s => { const e = r.querySelector(s); return e ? e.textContent.trim() : null; };
              return {seq: r.dataset.seq, decision_attr: r.dataset.decision, agent: t('td.agent'),
                      request: t('td.request'), rule: t('td.rule'), decision: t('td.decision'),
                      status: t('td.status'), latency: t('td.latency')};
            });""")

    def screenshot(self, name):
        os.makedirs(SCREENSHOTS, exist_ok=True)
        path = os.path.join(SCREENSHOTS, f"{name}.png")
        if not self.driver.save_screenshot(path):
            raise AssertionError(f"screenshot {path} not saved")
        return path


class ConsoleTest(DaemonTestCase):
    """One daemon with the console (session 1 h) for the class; each test
    opens its own browser (fresh profile) and signs it in with its own link."""

    @classmethod
    def env_options(cls):
        cls.console_port = free_port()
        return dict(rules=RULES, config_extra=console_options(cls.console_port))

    @classmethod
    def setUpClass(cls):
        require_root()
        require_browser()
        super().setUpClass()
        cls.console = Console(cls.env, cls.console_port)

    # --- helpers -----------------------------------------------------------

    def browser(self, args=()):
        b = Browser(args)
        self.addCleanup(b.close)
        return b

    def signed_in_browser(self, env=None, port=None):
        """A browser signed in through a fresh link; the app is up (#session-state)."""
        env, port = env or self.env, port or self.console_port
        b = self.browser()
        link, _ = sign_in_link(env, port)
        b.driver.get(link)
        waited(lambda: re.search(r"(?i)signed in", b.text("#session-state") or ""), 10,
               "#session-state to say signed in", lambda: (b.text("#session-state"), b.body_text()[:300]))
        return b

    @staticmethod
    def tab_token(b):
        """The CSRF token the console's page keeps for this tab (None: none)."""
        return b.js("return sessionStorage.getItem(arguments[0]);", TOKEN_KEY)

    def deny_all(self):
        for a in pending_approvals(self.env):
            self.env.cli("approvals", "deny", str(a["id"]))

    def hold(self, name, body):
        """An agent's POST .../clusters, held by the approve rule: (process, the held entry, when it was seen)."""
        p = spawn(self.env, "POST", CLUSTERS, name, body=body)
        self.addCleanup(stop, p)
        self.addCleanup(self.deny_all)  # runs before stop: the agent gets its 403 and ends

        def held():
            if p.poll() is not None:
                raise AssertionError(f"agent {name} finished instead of being held: {finish(p)}")
            t = time.monotonic()
            a = next((a for a in pending_approvals(self.env) if a["agent"] == name), None)
            return (a, t) if a else None
        a, seen = wait_for(held, timeout=10, what=f"a held request of {name}")
        return p, a, seen

    def wait_card(self, b, approval_id, seen, within=1.0):
        """Waits for the card of approval_id; it must be there within `within` s of `seen`."""
        def card():
            return next((c for c in b.approvals() if c["id"] == str(approval_id)), None)
        c = wait_for(card, timeout=max(0.0, seen + within - time.monotonic()),
                     what=f"the card of held request {approval_id} within {within} s of being held")
        return c, time.monotonic() - seen

    def assertStillHeld(self, approval_id, proc, fake_before, what):
        self.assertIn(approval_id, [a["id"] for a in pending_approvals(self.env)], f"{what} decided it")
        self.assertIsNone(proc.poll(), f"{what}: the agent finished")
        self.assertEqual(self.env.fake.api_requests()[fake_before:], [], f"{what}: the stand-in saw it")

    def assertRefusedCsrf(self, r, what):
        self.assertEqual(r.status, 403, f"{what}: {r}")
        doc = r.json()
        self.assertIs(doc["ok"], False, doc)
        self.assertIn("CSRF", doc["error"], doc)

    def assertInert(self, b):
        """Nothing an agent wrote ran or became markup."""
        try:
            alert = b.driver.switch_to.alert
            text = alert.text
            alert.dismiss()
            self.fail(f"an alert is open: {text!r}")
        except NoAlertPresentException:
            pass
        self.assertEqual(b.js("return typeof window.__pwned;"), "undefined")
        markup = b.js("return Array.from(document.querySelectorAll("
                      "'#approvals script, #approvals img, #approvals svg, #approvals iframe, "
                      "#decisions script, #decisions img, #decisions svg, #decisions iframe'))"
                      ".map(e => e.outerHTML);")
        self.assertEqual(markup, [], "agent-controlled text became elements")
        csp = [m for m in b.console_log() if "Content Security Policy" in m]
        self.assertEqual(csp, [], "the page tried something its CSP refused")

    def explain(self, b, method, path, agent, host=HOST, body=""):
        """Fills in and submits the explain form; returns pre#explain-result's text once it changed."""
        b.show("rules")
        before = b.text("pre#explain-result") or ""
        Select(b.driver.find_element(By.ID, "explain-method")).select_by_visible_text(method)
        for field, value in (("explain-path", path), ("explain-agent", agent), ("explain-host", host),
                             ("explain-body", body)):
            el = b.driver.find_element(By.ID, field)
            el.clear()
            el.send_keys(value)
        b.click("#explain-form button[type=submit], #explain-form input[type=submit], #explain-form button")
        return wait_for(lambda: (t := b.text("pre#explain-result") or "") and t != before and t, timeout=5,
                        what="the explain result")

    # --- 1. sign-in ----------------------------------------------------------

    def test_sign_in_link_works_once(self):
        """The link from `atlasgate console-url` signs a browser in, once: the
        same URL a second time (leaked, in a history, over a shoulder) gets
        403; the cookie is out of reach of scripts and of cross-site requests."""
        c = self.console
        r = c.request("GET", "/")
        self.assertEqual(r.status, 401, r)
        self.assertIn("atlasgate console-url", r.text())
        # Nothing kept open for whoever has no session.
        self.assertEqual(r.headers.get("Connection", "").lower(), "close", r)
        r = c.request("GET", "/api/v1/session")
        self.assertEqual(r.status, 401, r)
        self.assertEqual(r.headers.get("Connection", "").lower(), "close", r)
        link, token = sign_in_link(self.env, self.console_port)

        b = self.browser()
        b.driver.get(link)
        waited(lambda: re.search(r"(?i)signed in", b.text("#session-state") or ""), 10,
               "#session-state to say signed in", lambda: (b.text("#session-state"), b.body_text()[:300]))
        # The CSRF token came in the redirect's fragment; the page moved it
        # out of the address bar (and the history) into this tab's
        # sessionStorage, and shows the live page.
        self.assertEqual(b.driver.current_url, f"http://127.0.0.1:{self.console_port}/#live")
        tab_token = self.tab_token(b)
        self.assertRegex(tab_token or "", r"^[A-Za-z0-9_-]{43}$")
        self.assertNotIn(tab_token, b.js("return location.href + ' ' + document.referrer;"))
        self.assertFalse(b.js("return document.getElementById('page-live').hidden;"))
        self.assertEqual(b.js("return document.querySelector('nav a[aria-current=page]').dataset.page;"), "live")
        cookie = b.driver.get_cookie(c.cookie)
        self.assertIsNotNone(cookie, b.driver.get_cookies())
        self.assertTrue(cookie["httpOnly"], cookie)
        self.assertEqual(cookie.get("sameSite"), "Strict", cookie)
        self.assertEqual(cookie["path"], "/", cookie)
        self.assertNotIn("atlasgate", b.js("return document.cookie;"))
        self.assertEqual(b.js("return typeof EventSource;"), "function")

        # The same link again: refused, and no cookie.
        again = c.request("GET", f"/signin?token={token}")
        self.assertEqual(again.status, 403, again)
        self.assertNotIn(c.cookie, again.headers.get("Set-Cookie", ""), again)
        # A made-up one too.
        wrong = c.request("GET", "/signin?token=" + "A" * 43)
        self.assertEqual(wrong.status, 403, wrong)
        self.assertNotIn(c.cookie, wrong.headers.get("Set-Cookie", ""), wrong)

        # A script signs in the same way; the cookie's attributes are in its
        # Set-Cookie, the token in its Location's fragment.
        r = c.request("GET", sign_in_link(self.env, self.console_port)[0][len(c.origin):])
        c.signed_in(r)
        attrs = [a.strip().lower() for a in r.headers.get("Set-Cookie", "").split(";")[1:]]
        self.assertIn("httponly", attrs, r)
        self.assertIn("samesite=strict", attrs, r)
        self.assertIn("path=/", attrs, r)
        self.assertTrue(any(re.fullmatch(r"max-age=(3[5-6]\d\d)", a) for a in attrs), r)

        # The browser's session works for a script too (with the tab's
        # token); the page, the API and the refusals all carry the security
        # headers.
        session = cookie["value"]
        page = c.request("GET", "/", cookie=session)
        self.assertEqual(page.status, 200, page)
        api = c.request("GET", "/api/v1/session", cookie=session, csrf=tab_token)
        self.assertEqual(api.status, 200, api)
        doc = api.json()
        self.assertEqual(set(doc), {"expires_in_s", "expires_at"}, doc)  # no token handed out
        self.assertGreater(doc["expires_in_s"], 3000, doc)
        for r in (page, api, again, c.request("GET", "/assets/app.js")):
            self.assertEqual(r.headers.get("Content-Security-Policy"), CSP, r)
            self.assertEqual(r.headers.get("X-Content-Type-Options"), "nosniff", r)
            self.assertEqual(r.headers.get("Referrer-Policy"), "no-referrer", r)
            self.assertEqual(r.headers.get("Cache-Control"), "no-store", r)
            self.assertEqual(r.headers.get("X-Frame-Options"), "DENY", r)

    # --- 2. approvals ----------------------------------------------------------

    def test_held_request_shows_within_a_second_and_is_decided_by_a_click(self):
        """A held request must reach the operator at once (a human is
        waiting on it); Allow lets exactly it through, Deny keeps it from
        Atlas."""
        env = self.env
        tag = os.getpid()
        b = self.signed_in_browser()
        b.show("approvals")
        wait_for(lambda: b.js("const e = document.getElementById('no-approvals');"
                              " return !!e && !e.hidden && e.getClientRects().length > 0;"),
                 timeout=5, what="p#no-approvals (nothing held yet)")
        before = len(env.fake.api_requests())

        # Allow.
        p, a, seen = self.hold("console-yes", cluster_body(f"console-yes-{tag}", "M40"))
        card, latency_allow = self.wait_card(b, a["id"], seen)
        self.assertEqual((card["agent"], card["method"], card["host"], card["path"], card["rule"]),
                         ("console-yes", "POST", HOST, CLUSTERS, HOLD["name"]), card)
        self.assertIn(f"console-yes-{tag}", card["body"])
        self.assertRegex(card["waiting"], r"\d")
        waited(lambda: (b.text("#approvals-count") or "").strip() == "1", 3, "the nav badge to say 1",
               lambda: b.text("#approvals-count"))
        self.assertIsNone(p.poll())
        self.assertEqual(env.fake.api_requests()[before:], [], "a held request reached the stand-in")
        b.click(f'div.approval[data-id="{a["id"]}"] button.allow')
        r = finish(p)
        self.assertEqual(r.status, 201, r)  # the stand-in's answer to POST .../clusters
        self.assertEqual(r.json()["name"], f"console-yes-{tag}")
        posts = [x for x in env.fake.api_requests()[before:] if x["method"] == "POST"]
        self.assertEqual(len(posts), 1, posts)
        self.assertIn(f"console-yes-{tag}", posts[0]["body"])
        wait_for(lambda: not [c for c in b.approvals() if c["id"] == str(a["id"])], timeout=3,
                 what="the allowed card to go")
        self.assertEqual(pending_approvals(env), [])

        # Deny.
        seen_before = len(env.fake.api_requests())
        p, a, seen = self.hold("console-no", cluster_body(f"console-no-{tag}", "M50"))
        card, latency_deny = self.wait_card(b, a["id"], seen)
        self.assertEqual(card["agent"], "console-no", card)
        b.click(f'div.approval[data-id="{a["id"]}"] button.deny')
        r = finish(p)
        self.assertEqual(r.status, 403, r)
        self.assertEqual(json.loads(r.body)["errorCode"], "ATLASGATE_APPROVAL_DENIED", r)
        self.assertEqual(env.fake.api_requests()[seen_before:], [], "a denied request reached the stand-in")
        self.assertNotIn(f"console-no-{tag}", json.dumps(env.fake.api_requests()))
        wait_for(lambda: not b.approvals(), timeout=3, what="the denied card to go")
        recs = {x["agent"]: x for x in env.audit()}
        self.assertEqual((recs["console-yes"]["rule"], recs["console-yes"]["status"]), (HOLD["name"], 201))
        self.assertEqual((recs["console-no"]["rule"], recs["console-no"]["status"]), (HOLD["name"], 403))
        print(f"\n  held -> card: {latency_allow * 1000:.0f} ms (allow), {latency_deny * 1000:.0f} ms (deny)")

    def test_a_card_no_longer_held_stays_in_place(self):
        """Cards must not move under the operator's cursor: a held request
        decided elsewhere stays where it was, greyed, "no longer held", its
        buttons disabled, while the pointer is over the list; new cards go
        at the end. It goes once it has been stale for 10 s and the
        pointer has left the list; a click on a card in the instant its
        card moved up (aimed at what was there before) is ignored."""
        env = self.env
        tag = os.getpid()
        b = self.signed_in_browser()
        b.show("approvals")
        before = len(env.fake.api_requests())
        p1, a1, _ = self.hold("console-gone", cluster_body(f"console-gone-{tag}", "M40"))
        p2, a2, seen2 = self.hold("console-stays", cluster_body(f"console-stays-{tag}", "M40"))
        self.wait_card(b, a2["id"], seen2, within=3)
        ids = lambda: [c["id"] for c in b.approvals()]  # noqa: E731
        self.assertEqual(ids(), [str(a1["id"]), str(a2["id"])])
        card2 = f'div.approval[data-id="{a2["id"]}"]'
        top = lambda css: b.js("const e = document.querySelector(arguments[0]);"  # noqa: E731
                               " return e ? e.getBoundingClientRect().top + window.scrollY : null;", css)
        top2 = top(card2)

        # The pointer over the second card; the first is decided elsewhere.
        ActionChains(b.driver).move_to_element(b.driver.find_element(By.CSS_SELECTOR, card2 + " .line1")).perform()
        self.assertTrue(b.js("return document.getElementById('approvals').matches(':hover');"))
        self.assertEqual(env.cli("approvals", "deny", str(a1["id"])).returncode, 0)
        self.assertEqual(finish(p1).status, 403)
        card1 = f'div.approval[data-id="{a1["id"]}"]'
        stale = lambda: b.js("const c = document.querySelector(arguments[0]); return c && {"  # noqa: E731
                             " stale: c.classList.contains('stale'), waiting: c.querySelector('.waiting').textContent,"
                             " disabled: Array.from(c.querySelectorAll('button')).map(x => x.disabled),"
                             " opacity: getComputedStyle(c).opacity};", card1)
        got = waited(lambda: (x := stale()) and x["stale"] and x, 5, "the decided card to be marked stale", stale)
        self.assertEqual(got["waiting"], "no longer held", got)
        self.assertEqual(got["disabled"], [True, True], got)
        self.assertLess(float(got["opacity"]), 1, got)
        stale_at = time.monotonic()
        self.assertEqual(top(card2), top2, "the card under the pointer moved")
        waited(lambda: (b.text("#approvals-count") or "").strip() == "1", 3, "the badge to count only held requests",
               lambda: b.text("#approvals-count"))

        # A new one goes at the end.
        p3, a3, seen3 = self.hold("console-new", cluster_body(f"console-new-{tag}", "M40"))
        self.wait_card(b, a3["id"], seen3, within=3)
        self.assertEqual(ids(), [str(a1["id"]), str(a2["id"]), str(a3["id"])])
        self.assertEqual(top(card2), top2, "a new card moved the one under the pointer")
        b.screenshot("approvals-stale")

        # Past 10 s, still there while the pointer is over the list.
        time.sleep(max(0.0, stale_at + 12.5 - time.monotonic()))
        self.assertEqual(ids(), [str(a1["id"]), str(a2["id"]), str(a3["id"])], "dropped under the pointer")
        self.assertEqual(top(card2), top2)

        # The pointer leaves: the stale card goes and the list closes up.
        # A click on the second card in that instant is ignored.
        b.js("""const box = document.getElementById('approvals'), gone = arguments[0], btn = arguments[1];
                window.__clickedAfterMove = 0;
                new MutationObserver((m, o) => {
                  if (document.querySelector(gone)) return;
                  o.disconnect();
                  document.querySelector(btn).click();
                  window.__clickedAfterMove = 1;
                }).observe(box, {childList: true});""", card1, card2 + " button.allow")
        ActionChains(b.driver).move_to_element(b.driver.find_element(By.CSS_SELECTOR, "#h-approvals")).perform()
        wait_for(lambda: ids() == [str(a2["id"]), str(a3["id"])], timeout=3, what="the stale card to go")
        self.assertLess(top(card2), top2, "the list did not close up")
        self.assertEqual(b.js("return window.__clickedAfterMove;"), 1)
        time.sleep(1.0)
        self.assertStillHeld(a2["id"], p2, before, "a click on a card that had just moved")
        card = next(c for c in b.approvals() if c["id"] == str(a2["id"]))
        self.assertFalse(card["error"], card)

        # Later, the same click counts.
        b.click(card2 + " button.deny")
        self.assertEqual(finish(p2).status, 403)
        wait_for(lambda: ids() == [str(a3["id"])], timeout=3, what="the denied card to go")

    # --- 3. live view ----------------------------------------------------------

    def test_live_view_shows_a_block_without_reload(self):
        """The operator watching the live view sees a blocked request as it
        happens (Server-Sent Events), not on the next reload."""
        b = self.signed_in_browser()
        b.show("live")
        waited(lambda: (b.text("#live-state") or "").strip() == "live", 5, "#live-state to say live",
               lambda: b.text("#live-state"))
        b.js("window.__notReloaded = 1;")
        path = f"{API}/groups/{PROJECT_ID}/clusters/live-{os.getpid()}"
        r = call(self.env, "DELETE", path, name="console-live")
        self.assertEqual(r.status, 403, r)
        done = time.monotonic()

        def row():
            return next((x for x in b.decisions() if x["agent"] == "console-live" and path in (x["request"] or "")),
                        None)
        got = wait_for(row, timeout=2, what="the blocked request in the live table")
        took = time.monotonic() - done
        self.assertEqual((got["decision"], got["rule"], got["decision_attr"]), ("block", BLOCK["name"], "block"), got)
        self.assertRegex(got["request"], rf"^DELETE\s*{re.escape(path)}$", got)
        self.assertRegex(got["status"], r"^403(?!\d)", got)
        self.assertRegex(got["latency"], r"^\d+(\.\d+)? ms$", got)
        self.assertEqual(b.js("return window.__notReloaded;"), 1, "the page was reloaded")
        newest = b.decisions()[0]
        self.assertEqual(newest["seq"], got["seq"], "newest first")
        print(f"\n  blocked -> live row: {took * 1000:.0f} ms")

    # --- 4. session expiry -----------------------------------------------------

    def test_expired_session_is_refused(self):
        """A session ends when it says it does: a cookie kept past its
        Max-Age (copied out of the browser, say) opens nothing, and the
        page tells the operator how to get back in. A daemon of its own,
        with 3 s sessions."""
        port = free_port()
        env = Env(rules=RULES, config_extra=console_options(port, "3s"))
        self.addCleanup(env.close)
        env.start_daemon()
        c = Console(env, port)
        b = self.signed_in_browser(env, port)
        signed_in = time.monotonic()
        cookie = b.driver.get_cookie(c.cookie)
        self.assertIsNotNone(cookie, b.driver.get_cookies())
        session, token = cookie["value"], self.tab_token(b)
        r = c.request("GET", "/api/v1/session", cookie=session, csrf=token)
        self.assertEqual(r.status, 200, r)
        left = r.json()["expires_in_s"]
        self.assertLessEqual(left, 3, r)
        self.assertEqual(c.request("GET", "/api/v1/approvals", cookie=session, csrf=token).status, 200)

        expired = "Session expired or signed out"
        waited(lambda: expired in (b.text("#session-state") or ""), 3 + 10,
               "#session-state to say the session expired", lambda: b.text("#session-state"))
        took = time.monotonic() - signed_in
        self.assertGreaterEqual(took, 2.0, "expired early")
        self.assertIn("atlasgate console-url", b.text("#session-state"))
        # Past the session's end by the server's own clock, whatever the page did.
        time.sleep(max(0.0, signed_in + left + 0.5 - time.monotonic()))
        r = c.request("GET", "/api/v1/approvals", cookie=session, csrf=token)
        self.assertEqual(r.status, 401, r)
        self.assertIs(r.json()["ok"], False, r)
        self.assertEqual(r.headers.get("Connection", "").lower(), "close", r)
        self.assertEqual(c.request("GET", "/api/v1/session", cookie=session, csrf=token).status, 401)
        self.assertEqual(c.request("GET", "/", cookie=session).status, 401)
        print(f"\n  signed in -> expired message: {took:.1f} s")

    # --- 5. CSRF -----------------------------------------------------------------

    def test_state_change_needs_the_sessions_csrf_token(self):
        """A page on another site can make the browser POST with the
        session's cookie (SameSite aside); it cannot read the CSRF token.
        Without the session's own token (even from the console's Origin),
        or from a foreign Origin (even with the token), nothing changes."""
        env, c = self.env, self.console
        before = len(env.fake.api_requests())
        p, a, _ = self.hold("console-csrf", cluster_body(f"console-csrf-{os.getpid()}", "M40"))
        cookie, token = c.sign_in()
        _, other = c.sign_in()
        self.assertNotEqual(token, other)
        allow = f"/api/v1/approvals/{a['id']}/allow"

        self.assertRefusedCsrf(c.request("POST", allow, cookie=cookie), "no X-CSRF-Token")
        self.assertStillHeld(a["id"], p, before, "a POST without X-CSRF-Token")
        # One character changed (a token may itself start with "x": 1 in 64).
        wrong = ("y" if token[0] == "x" else "x") + token[1:]
        self.assertRefusedCsrf(c.request("POST", allow, cookie=cookie, csrf=wrong), "wrong token")
        self.assertStillHeld(a["id"], p, before, "a POST with a wrong X-CSRF-Token")
        self.assertRefusedCsrf(c.request("POST", allow, cookie=cookie, csrf=""), "empty token")
        self.assertRefusedCsrf(c.request("POST", allow, cookie=cookie, csrf=other), "another session's token")
        self.assertStillHeld(a["id"], p, before, "a POST with another session's token")
        r = c.request("POST", allow, cookie=cookie, csrf=token, origin="http://evil.example")
        self.assertTrue(400 <= r.status < 500, f"foreign Origin: {r}")
        self.assertIs(r.json()["ok"], False, r)
        self.assertStillHeld(a["id"], p, before, "a POST with Origin: http://evil.example")
        # What a <form method=post enctype=text/plain> on evil.example sends.
        r = c.request("POST", allow, cookie=cookie, origin="http://evil.example", content_type="text/plain",
                      body=b"x=1")
        self.assertTrue(400 <= r.status < 500, f"a cross-site form's POST: {r}")
        self.assertStillHeld(a["id"], p, before, "a cross-site form's POST")
        r = c.request("POST", allow, csrf=token)
        self.assertIn(r.status, (401, 403), f"token without the session: {r}")
        self.assertStillHeld(a["id"], p, before, "a POST without the session cookie")
        # Sign-out is a state change too.
        self.assertRefusedCsrf(c.request("POST", "/api/v1/signout", cookie=cookie), "signout without token")
        self.assertEqual(c.request("GET", "/api/v1/session", cookie=cookie, csrf=token).status, 200,
                         "signed out by a forgery")
        # What a page on another port of 127.0.0.1 sends (Sec-Fetch-Site:
        # same-site, ports aside), or one on another site: refused, even
        # with the token and the console's Origin.
        for site in ("same-site", "cross-site"):
            r = c.request("POST", allow, cookie=cookie, csrf=token, headers={"Sec-Fetch-Site": site})
            self.assertEqual(r.status, 403, f"Sec-Fetch-Site: {site}: {r}")
            self.assertIs(r.json()["ok"], False, r)
            self.assertStillHeld(a["id"], p, before, f"a POST with Sec-Fetch-Site: {site}")

        # The real thing: deny with the token, from the console's own origin.
        r = c.request("POST", f"/api/v1/approvals/{a['id']}/deny", cookie=cookie, csrf=token)
        self.assertEqual((r.status, r.json()), (200, {"ok": True}), r)
        self.assertEqual(finish(p).status, 403)
        self.assertEqual(env.fake.api_requests()[before:], [], "the denied request reached the stand-in")
        r = c.request("POST", f"/api/v1/approvals/{a['id']}/deny", cookie=cookie, csrf=token)
        self.assertEqual(r.status, 404, r)
        self.assertEqual(r.json(), {"ok": False, "error": f"no held request with id {a['id']}"})
        # Sign out for real: the cookie is cleared and dead.
        r = c.request("POST", "/api/v1/signout", cookie=cookie, csrf=token)
        self.assertEqual((r.status, r.json()), (200, {"ok": True}), r)
        self.assertRegex(r.headers.get("Set-Cookie", ""), rf"^{c.cookie}=;|Max-Age=0|expires=Thu, 01 Jan 1970", r)
        self.assertEqual(c.request("GET", "/api/v1/approvals", cookie=cookie, csrf=token).status, 401)

    # --- 5b. the cookie is not enough -------------------------------------------------

    def test_a_stolen_cookie_alone_opens_nothing(self):
        """Browsers send a cookie of 127.0.0.1 to every port of 127.0.0.1:
        any local process serving a page gets the console's session cookie
        (HttpOnly and SameSite do not help). With it, but without the
        session's token, nothing opens: no read (not the session either,
        which used to hand out the token), no event stream, no decision."""
        env, c = self.env, self.console
        before = len(env.fake.api_requests())
        p, a, _ = self.hold("console-stolen", cluster_body(f"console-stolen-{os.getpid()}", "M40"))
        cookie, token = c.sign_in()
        _, other = c.sign_in()
        wrong = ("B" if token[0] == "A" else "A") + token[1:]
        tokens = (("no X-CSRF-Token", None), ("an empty token", ""), ("a wrong token", wrong),
                  ("another session's token", other))
        for path in ("/api/v1/session", "/api/v1/approvals", "/api/v1/decisions?since=0&limit=100",
                     "/api/v1/events", "/api/v1/agents", "/api/v1/rules", "/api/v1/credentials", "/api/v1/stats"):
            for what, csrf in tokens:
                self.assertRefusedCsrf(c.request("GET", path, cookie=cookie, csrf=csrf),
                                       f"GET {path} with the cookie and {what}")
        # The stream takes its token in the query (EventSource sends no headers).
        for query in ("?csrf=", f"?csrf={wrong}", f"?csrf={other}", f"?since=0&csrf={wrong}", f"?csrf={token[:-1]}"):
            self.assertRefusedCsrf(c.request("GET", "/api/v1/events" + query, cookie=cookie),
                                   f"GET /api/v1/events{query} with the cookie")
        allow = f"/api/v1/approvals/{a['id']}/allow"
        for what, csrf in tokens:
            self.assertRefusedCsrf(c.request("POST", allow, cookie=cookie, csrf=csrf), f"allow with {what}")
        self.assertStillHeld(a["id"], p, before, "requests with the cookie alone")

        # With the token, the same requests are answered: it was the token
        # that was missing. The session no longer hands it out.
        r = c.request("GET", "/api/v1/session", cookie=cookie, csrf=token)
        self.assertEqual(r.status, 200, r)
        self.assertNotIn(token, r.text())
        self.assertEqual(set(r.json()), {"expires_in_s", "expires_at"}, r)
        r = c.request("GET", "/api/v1/approvals", cookie=cookie, csrf=token)
        self.assertEqual(r.status, 200, r)
        self.assertIn(a["id"], [x["id"] for x in r.json()["approvals"]], r)
        r = c.request("GET", "/api/v1/decisions?since=0&limit=100", cookie=cookie, csrf=token)
        self.assertEqual(r.status, 200, r)
        r = c.request("GET", f"/api/v1/events?csrf={token}", cookie=cookie)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(r.headers.get("Content-Type", "").startswith("text/event-stream"), r)
        # Even with the token, a request the browser says another page made
        # (a page on another port is same-site) is refused.
        for site in ("same-site", "cross-site"):
            for path in ("/api/v1/session", "/api/v1/approvals", f"/api/v1/events?csrf={token}"):
                r = c.request("GET", path, cookie=cookie, csrf=token, headers={"Sec-Fetch-Site": site})
                self.assertEqual(r.status, 403, f"GET {path} with Sec-Fetch-Site: {site}: {r}")
        for site in ("same-origin", "none"):
            r = c.request("GET", "/api/v1/session", cookie=cookie, csrf=token, headers={"Sec-Fetch-Site": site})
            self.assertEqual(r.status, 200, f"Sec-Fetch-Site: {site}: {r}")
        self.assertStillHeld(a["id"], p, before, "the requests with the token")

        r = c.request("POST", f"/api/v1/approvals/{a['id']}/deny", cookie=cookie, csrf=token)
        self.assertEqual((r.status, r.json()), (200, {"ok": True}), r)
        self.assertEqual(finish(p).status, 403)
        self.assertEqual(env.fake.api_requests()[before:], [], "the denied request reached the stand-in")

    def test_a_page_on_another_port_gets_the_cookie_but_cannot_approve(self):
        """The review's attack, end to end: the signed-in operator's browser
        visits a page a local process serves on another port of 127.0.0.1.
        That process receives the console's cookie (which is why the cookie
        alone must not be enough); its page's requests to the console, and
        the cookie replayed from a script with the console's own Origin,
        cannot approve the held request. The operator then denies it."""
        env, c = self.env, self.console
        before = len(env.fake.api_requests())
        p, a, seen = self.hold("console-evil", cluster_body(f"console-evil-{os.getpid()}", "M40"))
        b = self.signed_in_browser()
        console_tab = b.driver.current_window_handle
        b.show("approvals")
        self.wait_card(b, a["id"], seen, within=5)
        session = b.driver.get_cookie(c.cookie)["value"]

        evil = HostilePage(self.console_port, a["id"])
        self.addCleanup(evil.stop)
        b.driver.switch_to.new_window("tab")
        b.driver.get(evil.url)
        report = waited(lambda: evil.reports and evil.reports[0], 15, "the hostile page's report",
                        lambda: evil.requests)
        got = [r["cookie"] for r in evil.requests if r["method"] == "GET" and r["path"] == "/"]
        self.assertEqual(len(got), 1, evil.requests)
        # The other port got the console's cookie: the browser sends it there.
        self.assertIn(f"{c.cookie}={session}", [x.strip() for x in (got[0] or "").split(";")], got)
        # From the page: nothing readable, no stream, the approval refused.
        self.assertNotRegex(report["session"], r"^read 200", report)
        self.assertNotEqual(report["stream"], "open", report)
        self.assertStillHeld(a["id"], p, before, "the hostile page's requests")

        # The process replays the cookie with the console's own Origin and
        # JSON, as the console's page would: refused without the token, and
        # it has no way to get it.
        stolen = got[0].split(f"{c.cookie}=", 1)[1].split(";")[0]
        allow = f"/api/v1/approvals/{a['id']}/allow"
        self.assertRefusedCsrf(c.request("POST", allow, cookie=stolen), "the replayed cookie's allow")
        self.assertRefusedCsrf(c.request("GET", "/api/v1/session", cookie=stolen), "the replayed cookie's session")
        self.assertRefusedCsrf(c.request("GET", "/api/v1/events", cookie=stolen), "the replayed cookie's stream")
        self.assertStillHeld(a["id"], p, before, "the replayed cookie")

        # The operator's tab is still signed in and decides properly.
        b.driver.close()
        b.driver.switch_to.window(console_tab)
        self.assertRegex(b.text("#session-state") or "", r"(?i)signed in")
        b.show("approvals")
        b.click(f'div.approval[data-id="{a["id"]}"] button.deny')
        r = finish(p)
        self.assertEqual(r.status, 403, r)
        self.assertEqual(json.loads(r.body)["errorCode"], "ATLASGATE_APPROVAL_DENIED", r)
        self.assertEqual(env.fake.api_requests()[before:], [], "the request reached the stand-in")
        print(f"\n  the page on port {evil.port} got the cookie; its page saw: {report}")

    def test_a_tab_without_the_token_is_not_signed_in(self):
        """The cookie is the browser's, the token the tab's: a tab opened
        by hand on the console's address has the cookie but no token, and
        says it is not signed in (no polling, no stream), while the tab
        that signed in goes on. Signing in again in another tab replaces
        the browser's cookie: the first tab's token is then not the
        session's, and it says so too."""
        c = self.console
        b = self.signed_in_browser()
        first = b.driver.current_window_handle
        self.assertTrue(self.tab_token(b))
        b.driver.switch_to.new_window("tab")
        b.driver.get(f"http://127.0.0.1:{self.console_port}/")
        waited(lambda: NOT_SIGNED_IN in (b.text("#session-state") or ""), 10,
               "#session-state to say this tab is not signed in", lambda: b.text("#session-state"))
        self.assertIsNotNone(b.driver.get_cookie(c.cookie), "the cookie was not there: not the case under test")
        self.assertIsNone(self.tab_token(b))
        self.assertEqual((b.text("#live-state") or "").strip(), "offline")
        time.sleep(0.5)
        api = b.js("return performance.getEntriesByType('resource').map(e => e.name)"
                   ".filter(n => n.includes('/api/'));")
        self.assertEqual(api, [], "a tab without the token called the API")
        second = b.driver.current_window_handle

        b.driver.switch_to.window(first)
        self.assertRegex(b.text("#session-state") or "", r"(?i)signed in")
        b.show("agents")
        wait_for(lambda: "Agent" in (b.text("table#agents-table") or ""), timeout=5, what="the agents table")
        self.assertRegex(b.text("#session-state") or "", r"(?i)signed in")

        # A new link in the second tab: a new session, a new cookie for the browser.
        b.driver.switch_to.window(second)
        b.driver.get(sign_in_link(self.env, self.console_port)[0])
        waited(lambda: re.search(r"(?i)signed in", b.text("#session-state") or ""), 10,
               "the second tab to sign in", lambda: b.text("#session-state"))
        b.driver.switch_to.window(first)
        b.show("approvals")   # a request with the old token and the new cookie
        waited(lambda: NOT_SIGNED_IN in (b.text("#session-state") or ""), 5,
               "the first tab to say it is not signed in", lambda: b.text("#session-state"))
        self.assertIsNone(self.tab_token(b))

    def test_bad_sign_in_attempts_never_block_a_valid_link(self):
        """Guessing at sign-in tokens is slowed down, but only misses are
        charged: after 10 bad attempts, a valid link (one minted before
        them, and a fresh one) still signs in. A daemon of its own (its
        rate limit is not the other tests')."""
        port = free_port()
        env = Env(rules=RULES, config_extra=console_options(port))
        self.addCleanup(env.close)
        env.start_daemon()
        c = Console(env, port)
        earlier, _ = sign_in_link(env, port)
        bad = [secrets.token_urlsafe(32)[:43] for _ in range(7)] + ["", "A" * 42, "A" * 44]
        statuses = []
        for token in bad:
            r = c.request("GET", f"/signin?token={token}")
            statuses.append(r.status)
            self.assertIn(r.status, (403, 429), f"token {token!r}: {r}")
            self.assertNotIn(c.cookie, r.headers.get("Set-Cookie", ""), r)
        cookie, token = c.signed_in(c.request("GET", earlier[len(c.origin):]))
        self.assertEqual(c.request("GET", "/api/v1/session", cookie=cookie, csrf=token).status, 200)
        b = self.signed_in_browser(env, port)
        self.assertTrue(self.tab_token(b))
        print(f"\n  10 bad sign-ins answered {statuses}; then both valid links signed in")

    # --- 6. Host -------------------------------------------------------------------

    def test_forged_host_is_refused(self):
        """DNS rebinding: a hostile page whose name is made to resolve to
        127.0.0.1 is same-origin with itself, not with the console; the
        console refuses any Host but its own address."""
        port, c = self.console_port, self.console
        b = self.browser(["--host-resolver-rules=MAP rebind.test 127.0.0.1"])
        b.driver.get(f"http://rebind.test:{port}/")
        want = f'atlasgate console: refused: Host "rebind.test:{port}" is not this console\'s address'
        self.assertIn(want, b.body_text())
        self.assertEqual(b.driver.get_cookies(), [])

        cookie, token = c.sign_in()
        for path in ("/", "/api/v1/session", "/api/v1/approvals", "/assets/app.js"):
            r = c.request("GET", path, cookie=cookie, csrf=token, host=f"evil.example:{port}")
            self.assertEqual(r.status, 421, f"{path}: {r}")
            self.assertTrue(r.text().startswith(
                f'atlasgate console: refused: Host "evil.example:{port}" is not this console\'s address'), r)
            self.assertEqual(r.headers.get("Content-Security-Policy"), CSP, r)
        for host in (f"127.0.0.1:{port + 1}", "127.0.0.1", f"localhost.evil.example:{port}"):
            r = c.request("GET", "/api/v1/session", cookie=cookie, csrf=token, host=host)
            self.assertEqual(r.status, 421, f"Host {host}: {r}")
        r = c.request("POST", "/api/v1/signout", cookie=cookie, csrf=token, host=f"evil.example:{port}")
        self.assertEqual(r.status, 421, r)
        # Still signed in; and localhost:PORT is the console's own address too.
        self.assertEqual(c.request("GET", "/api/v1/session", cookie=cookie, csrf=token).status, 200)
        self.assertEqual(c.request("GET", "/api/v1/session", cookie=cookie, csrf=token,
                                   host=f"localhost:{port}").status, 200)

    # --- 7. hostile strings ------------------------------------------------------------

    def test_agent_strings_render_inert(self):
        """An agent writes what the operator reads: markup in a held body
        and in request paths must show as text, never run; invisible and
        bidi characters are spelled out; the preview's cut through a UTF-8
        character leaves no garbage."""
        env = self.env
        self.assertEqual(HOSTILE_BODY[511:513], "\u00e9".encode())
        b = self.signed_in_browser()
        b.show("live")

        for path in SVG_PATHS:
            r = call(env, "DELETE", path, name="console-svg")
            self.assertEqual(r.status, 403, r)
        rows = wait_for(lambda: (x := [r for r in b.decisions() if r["agent"] == "console-svg"]) and len(x) == 2 and x,
                        timeout=3, what="the two blocked <svg> paths in the live table")
        self.assertEqual(sorted(re.sub(r"^DELETE\s*", "", r["request"]) for r in rows), sorted(SVG_PATHS), rows)
        self.assertTrue(all(r["decision"] == "block" and r["rule"] == BLOCK["name"] for r in rows), rows)

        body_file = os.path.join(env.tmp, "hostile-body")
        with open(body_file, "wb") as f:
            f.write(HOSTILE_BODY)
        p = spawn(env, "POST", CLUSTERS, "console-hostile", extra=["-H", "Content-Type: application/json",
                                                                   "--data-binary", f"@{body_file}"])
        self.addCleanup(stop, p)
        self.addCleanup(self.deny_all)
        a = wait_for(lambda: next((x for x in pending_approvals(env) if x["agent"] == "console-hostile"), None),
                     timeout=10, what="the hostile body to be held")
        # What the server sends: the first 511 bytes, cut before the é.
        preview = HOSTILE_BODY[:511].decode()
        self.assertEqual(a["body"], preview)
        self.assertTrue(a["body_truncated"], a)
        self.assertEqual(a["body_bytes"], len(HOSTILE_BODY), a)

        b.show("approvals")
        card = wait_for(lambda: next((c for c in b.approvals() if c["id"] == str(a["id"])), None), timeout=3,
                        what="the hostile card")
        shown = card["body"]
        self.assertIn('<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">', shown)
        # The escape shows as it is or spelled out, but the rest is the
        # server's preview, character for character: it ends on the last
        # "a" before the cut, no U+FFFD, no mojibake of half an é.
        for spelled in ("\\x1b", "\\u001b", "\\e", "\u241b", "^["):
            shown = shown.replace(spelled, "\x1b")
        # Invisible, joining and bidi characters never appear as they are
        # (they could hide or reorder what the operator reads): \\uXXXX.
        for ch in INVISIBLE:
            spelled = f"\\u{ord(ch):04x}"
            self.assertNotIn(ch, card["body"], f"U+{ord(ch):04X} shown as it is")
            self.assertIn(spelled, card["body"], f"U+{ord(ch):04X} not spelled out")
            shown = shown.replace(spelled, ch)
        self.assertEqual(shown, preview, card)
        self.assertTrue(card["body"].endswith("aaaa"), card)
        for garbage in ("\ufffd", "\u00c3", "\u00e9"):
            self.assertNotIn(garbage, card["body"], card)
        self.assertTrue(card["truncated_visible"], card)
        self.assertRegex(card["truncated"], rf"truncated: showing the first 511 of {len(HOSTILE_BODY)} bytes")
        self.assertInert(b)

        b.show("live")
        self.assertInert(b)
        self.deny_all()
        self.assertEqual(finish(p).status, 403)
        self.assertNotIn("__pwned", json.dumps(env.fake.requests()))

    # --- 8. explain, and every page's screenshot -----------------------------------------

    def test_explain_form_names_the_deciding_rule(self):
        """The rules page answers "what would happen to this request?" with the compiled rules."""
        b = self.signed_in_browser()
        b.show("rules")
        wait_for(lambda: HOLD["name"] in (b.text("pre#rules-table") or ""), timeout=5,
                 what="the rule table on the rules page")
        self.assertIn(BLOCK["name"], b.text("pre#rules-table"))
        out = self.explain(b, "POST", f"{API}/groups/1/clusters", "shell-agent", body='{"name":"x"}')
        self.assertIn(HOLD["name"], out)
        self.assertIn("approve", out)
        out = self.explain(b, "DELETE", f"{API}/groups/1/clusters/Cluster0", "shell-agent")
        self.assertIn(BLOCK["name"], out)
        self.assertIn("block", out)
        self.assertNotIn("error", b.js("return document.getElementById('explain-result').className;"))

    def test_screenshots_of_every_page(self):
        """Each page, with something on it, for a human to look at (not committed)."""
        env = self.env
        for name in ("console-shots-a", "console-shots-b"):
            self.assertEqual(call(env, "GET", CLUSTERS, name=name).status, 200)
        self.assertEqual(call(env, "DELETE", f"{CLUSTERS}/Cluster0", name="console-shots-b").status, 403)
        b = self.signed_in_browser()
        b.show("live")
        wait_for(lambda: any(r["agent"] == "console-shots-b" and r["decision"] == "block" for r in b.decisions()),
                 timeout=5, what="the screenshot agents' requests in the live table")
        wait_for(lambda: b.js("return document.querySelectorAll('svg#chart *').length > 0;"), timeout=5,
                 what="the chart to be drawn")
        shots = [b.screenshot("live")]

        p, a, seen = self.hold("console-shots-held", cluster_body("shots", "M40"))
        b.show("approvals")
        self.wait_card(b, a["id"], seen, within=3)
        shots.append(b.screenshot("approvals"))

        b.show("agents")
        wait_for(lambda: "console-shots-a" in (b.text("table#agents-table") or ""), timeout=6,
                 what="the agents table")
        wait_for(lambda: "console-shots-held" in (b.text("table#connections-table") or ""), timeout=6,
                 what="the held agent's connection")
        self.assertIn(env.agents_cgroup, b.text("table#attached-table") or "")
        shots.append(b.screenshot("agents"))

        self.assertIn(HOLD["name"], self.explain(b, "POST", CLUSTERS, "console-shots-a", body='{"name":"big"}'))
        shots.append(b.screenshot("rules"))

        b.show("credentials")
        wait_for(lambda: f"service_account:{CLIENT_ID}" in (b.text("table#configured-table") or ""), timeout=5,
                 what="the configured credential")
        self.assertNotIn(CLIENT_SECRET, b.driver.page_source)
        shots.append(b.screenshot("credentials"))
        for s in shots:
            self.assertGreater(os.path.getsize(s), 5000, s)
        print(f"\n  screenshots: {', '.join(shots)}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
