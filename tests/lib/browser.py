"""A real browser for the tests: Debian's headless Chromium driven through
chromedriver's W3C WebDriver protocol (plain HTTP, no client library), with
a throw-away profile whose NSS database trusts only the cluster CA given."""
import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


# Chromium's own error page (body class "neterror") names the error in .error-code.
_NET_ERROR = """return document.body && document.body.classList.contains('neterror')
    ? ((document.querySelector('.error-code') || {}).textContent || 'neterror').trim() : null;"""


class NavigationError(AssertionError):
    """Chromium showed its own error page instead of the site's."""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    """with Browser(ca_pem) as b: b.basic_auth(u, p); b.open(url); b.source(); b.screenshot(path)"""

    def __init__(self, ca_pem=None, width=1400, height=1000):
        self.home = tempfile.mkdtemp(prefix="flower-browser-")
        self.ca_pem, self.size = ca_pem, (width, height)
        self.port = _free_port()
        self.driver = None
        self.session = None

    def __enter__(self):
        env = dict(os.environ, HOME=self.home)
        if self.ca_pem:   # Chromium on Linux reads the CAs it trusts from $HOME/.pki/nssdb
            nssdb = os.path.join(self.home, ".pki", "nssdb")
            os.makedirs(nssdb)
            ca_file = os.path.join(self.home, "ca.crt")
            with open(ca_file, "w", encoding="utf-8") as handle:
                handle.write(self.ca_pem)
            subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, env=env)
            subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "cluster-ca", "-i", ca_file],
                           check=True, env=env)
        self.driver = subprocess.Popen([CHROMEDRIVER, f"--port={self.port}"], env=env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                if self._call("GET", "/status")["value"].get("ready"):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={self.size[0]},{self.size[1]}", f"--user-data-dir={self.home}/profile"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        self.session = self._call("POST", "/session", caps, timeout=120)["value"]["sessionId"]
        return self

    def __exit__(self, *exc):
        try:
            if self.session:
                self._call("DELETE", f"/session/{self.session}")
        finally:
            if self.driver:
                self.driver.terminate()
                self.driver.wait(timeout=30)
            shutil.rmtree(self.home, ignore_errors=True)

    def _call(self, method, path, body=None, timeout=60):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode())

    def _cmd(self, method, path, body=None, timeout=60):
        return self._call(method, f"/session/{self.session}{path}", body, timeout)["value"]

    def basic_auth(self, user, password):
        """Send these credentials with every request (DevTools: extra HTTP headers)."""
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._cmd("POST", "/goog/cdp/execute", {"cmd": "Network.enable", "params": {}})
        self._cmd("POST", "/goog/cdp/execute", {"cmd": "Network.setExtraHTTPHeaders",
                                                "params": {"headers": {"Authorization": f"Basic {token}"}}})

    def open(self, url, attempts=5):
        """Load `url`; raise NavigationError if Chromium shows its own error
        page instead of what the server sent. ERR_NETWORK_CHANGED is loaded
        again: Chromium aborts a load when an address of this machine changes,
        which Docker does each time another scenario's container or network
        comes or goes (seen once in CI); it says nothing of the site."""
        for _ in range(attempts):
            self._cmd("POST", "/url", {"url": url}, timeout=120)
            error = self.script(_NET_ERROR)
            if error != "ERR_NETWORK_CHANGED":
                break
        if error:
            raise NavigationError(f"{url}: Chromium shows its error page: {error}")

    def status(self):
        """The HTTP status of the page's own response (Navigation Timing)."""
        return self.script("return performance.getEntriesByType('navigation')[0].responseStatus;")

    def title(self):
        return self._cmd("GET", "/title")

    def source(self):
        return self._cmd("GET", "/source")

    def script(self, source):
        """Run JavaScript in the page (the body of a function) and return its value."""
        return self._cmd("POST", "/execute/sync", {"script": source, "args": []})

    def text(self):
        """The page's visible text."""
        return self.script("return document.body.innerText;")

    def screenshot(self, path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(self._cmd("GET", "/screenshot")))
        return path
