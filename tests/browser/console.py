#!/usr/bin/env python3
"""The web console in headless Chromium, as people use it.

A tiny W3C WebDriver client over urllib (standard library only) drives Chromium through
chromedriver: a user logs in, deposits, transfers to a second user and sees the new balance and
the history; a form posted without its CSRF token is refused and moves nothing; staff log in,
search that user and freeze the wallet; the user's next transfer shows the frozen message on the
page. Money is checked through the API as well. Exits non-zero with a clear message on any
failure. With --screenshots, saves the main pages to docs/screenshots/.

Run it through tests/browser/run.sh, which starts the server and chromedriver.
"""

import argparse
import base64
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
PASSWORD = "correct horse battery"


class Failure(Exception):
    pass


class WebDriver:
    """The few WebDriver commands the test needs."""

    def __init__(self, url, profile):
        self.url = url.rstrip("/")
        self.wait_ready()
        args = [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--user-data-dir=" + profile, "--window-size=1280,900",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}}
        self.session = self.call("POST", "/session", caps)["sessionId"]

    def wait_ready(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/status", timeout=2) as r:
                    if json.load(r)["value"].get("ready"):
                        return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise Failure("chromedriver did not become ready within 30 s")

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            raise Failure(f"WebDriver {method} {path} failed: {e.code} {detail}") from None

    def s(self, path):
        return f"/session/{self.session}{path}"

    def go(self, url):
        self.call("POST", self.s("/url"), {"url": url})

    def current_url(self):
        return self.call("GET", self.s("/url"))

    def source(self):
        return self.call("GET", self.s("/source"))

    def find(self, css):
        # A page still loading after a click may not have the element yet: wait up to 5 s.
        deadline = time.time() + 5
        while True:
            try:
                found = self.call("POST", self.s("/element"), {"using": "css selector", "value": css})
                break
            except Failure as e:
                found = str(e)
                if time.time() > deadline:
                    break
                time.sleep(0.1)
        if not isinstance(found, dict) or ELEMENT not in found:
            raise Failure(f"no element {css!r} on {self.current_url()}: {found!r}"[:600])
        return found[ELEMENT]

    def type(self, css, text):
        el = self.find(css)
        self.call("POST", self.s(f"/element/{el}/clear"), {})
        self.call("POST", self.s(f"/element/{el}/value"), {"text": text})

    def click(self, css):
        """Clicks a link or a submit button and waits for the page it loads: the old
        document is marked first, and the wait ends when a complete document lacks the mark."""
        self.execute("document.documentElement.setAttribute('data-left', '1');")
        self.call("POST", self.s(f"/element/{self.find(css)}/click"), {})
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.execute("return document.readyState === 'complete' && "
                                "!document.documentElement.hasAttribute('data-left');"):
                    return
            except Failure:
                pass  # the document is being replaced
            time.sleep(0.05)
        raise Failure(f"clicking {css!r} loaded no new page within 10 s")

    def execute(self, script, args=None):
        return self.call("POST", self.s("/execute/sync"), {"script": script, "args": args or []})

    def screenshot(self, path):
        png = base64.b64decode(self.call("GET", self.s("/screenshot")))
        with open(path, "wb") as f:
            f.write(png)

    def browser_log(self):
        try:
            return self.call("POST", self.s("/se/log"), {"type": "browser"})
        except Failure:
            return []

    def quit(self):
        try:
            self.call("DELETE", self.s(""))
        except Failure:
            pass


class Api:
    """The wallet's JSON API, to set up users and check money independently of the pages."""

    def __init__(self, base):
        self.base = base.rstrip("/")

    def call(self, method, path, body=None, token=None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = "Token " + token
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def register(self, username):
        status, body = self.call("POST", "/api/auth/register", {
            "username": username, "email": username + "@example.com",
            "password": PASSWORD, "password_confirm": PASSWORD,
            "first_name": username.split("-")[0].capitalize(), "last_name": "Example",
        })
        if status != 201:
            raise Failure(f"registering {username} through the API: {status} {body}")
        return body["token"]

    def balance(self, token):
        status, body = self.call("GET", "/api/wallets/me", token=token)
        if status != 200:
            raise Failure(f"reading a balance through the API: {status} {body}")
        return body["balance"]


class Run:
    def __init__(self, args):
        self.base = args.base.rstrip("/")
        self.api = Api(self.base)
        self.admin = args.admin
        self.admin_password = os.environ.get("ADMIN_PASSWORD", "")
        self.shots = args.screenshots
        self.driver = WebDriver(args.driver, args.profile)
        self.passed = 0

    def check(self, ok, what):
        if not ok:
            raise Failure(f"{what} (page: {self.driver.current_url()})")
        self.passed += 1
        print(f"ok - {what}")

    def page_has(self, text, what):
        # The page a click loads may still be arriving: look again for up to 5 s.
        deadline = time.time() + 5
        src = self.driver.source()
        while text not in src and time.time() < deadline:
            time.sleep(0.1)
            src = self.driver.source()
        if text not in src:
            start = src.find("<main")
            raise Failure(f"{what}: {text!r} is not on {self.driver.current_url()}; "
                          f"the page shows: {src[start:start + 800]}")
        self.check(True, what)

    def shot(self, name):
        if self.shots:
            os.makedirs(self.shots, exist_ok=True)
            self.driver.screenshot(os.path.join(self.shots, name + ".png"))

    def login(self, username, password):
        d = self.driver
        d.go(self.base + "/console/login")
        d.type("#username", username)
        d.type("#password", password)
        d.click("form[action='/console/login'] button")
        self.check(d.current_url().rstrip("/").endswith("/console"),
                   f"{username} logs in and lands on the overview")

    def logout(self):
        self.driver.click("header form[action='/console/logout'] button")
        self.page_has("You are logged out.", "logging out shows the login form again")

    def main(self):
        d = self.driver
        suffix = secrets.token_hex(3)
        alice, bob = f"alice-{suffix}", f"bob-{suffix}"
        alice_token = self.api.register(alice)
        bob_token = self.api.register(bob)

        d.go(self.base + "/console/")
        self.check("/console/login" in d.current_url(), "the console sends a visitor to its login form")
        self.shot("login")
        d.type("#username", alice)
        d.type("#password", "not the password")
        d.click("form[action='/console/login'] button")
        self.page_has("Invalid username or password.", "a wrong password is said on the page")
        self.login(alice, PASSWORD)
        self.page_has(f"Signed in as <strong>{alice}</strong>", "the header names the user")

        d.type("#deposit-amount", "250.00")
        d.type("#deposit-note", "November salary")
        d.click("form[action='/console/deposit'] button")
        self.page_has("Deposit recorded.", "a deposit through its form is recorded")
        d.type("#transfer-to_username", bob)
        d.type("#transfer-amount", "40.00")
        d.type("#transfer-note", "Dinner")
        d.click("form[action='/console/transfer'] button")
        self.page_has("Transfer sent.", "a transfer through its form is sent")
        self.page_has('data-field="balance">210.00<', "the overview shows the new balance")
        self.check(self.api.balance(alice_token) == "210.00", "the API agrees on the sender's balance")
        self.check(self.api.balance(bob_token) == "40.00", "the recipient was credited")
        d.type("#deposit-amount", "12,50")
        d.click("form[action='/console/deposit'] button")
        self.page_has("is not a plain decimal amount", "a bad amount is explained beside its field")
        d.go(self.base + "/console/")
        self.shot("dashboard")

        d.click("header nav a[href='/console/history']")
        self.page_has("<td>TRANSFER_OUT</td>", "the history page is shown")
        src = d.source()
        self.check("<td>TRANSFER_OUT</td>" in src and "<td>DEPOSIT</td>" in src,
                   "the history lists the deposit and the transfer")
        self.check("November salary" in src and "Dinner" in src, "the history shows the notes")
        self.shot("history")

        # A form whose CSRF token was taken out is refused, and nothing moves.
        d.go(self.base + "/console/")
        d.execute("document.querySelector(\"form[action='/console/deposit'] input[name=csrf]\").remove();")
        d.type("#deposit-amount", "5.00")
        d.click("form[action='/console/deposit'] button")
        self.page_has("Not allowed", "a form without its CSRF token is refused")
        self.check(self.api.balance(alice_token) == "210.00", "the refused form moved nothing")
        d.go(self.base + "/console/")
        self.logout()

        self.login(self.admin, self.admin_password)
        d.click("header nav a[href='/console/staff/users']")
        d.type("#search", alice)
        d.click("form[action='/console/staff/users'] button")
        self.page_has(alice, "staff find the user by name")
        d.click("a[href^='/console/staff/users/']")
        self.page_has("210.00", "staff see the user's balance")
        d.type("#freeze-reason", "Card reported stolen")
        d.click("form[action$='/freeze'] button")
        self.page_has("Wallet frozen.", "staff freeze the wallet with a reason")
        self.page_has("Card reported stolen", "the page shows why it is frozen")
        self.shot("staff-user")
        d.click("header nav a[href='/console/staff/audit']")
        self.page_has("freeze", "the audit log lists the freeze")
        self.page_has("read_wallet", "the audit log lists staff reads")
        self.shot("audit")
        self.logout()

        self.login(alice, PASSWORD)
        self.page_has("Your wallet is frozen", "the user is told the wallet is frozen")
        d.type("#transfer-to_username", bob)
        d.type("#transfer-amount", "1.00")
        d.click("form[action='/console/transfer'] button")
        self.page_has("This wallet is frozen", "a transfer from a frozen wallet shows the frozen message")
        self.check(self.api.balance(alice_token) == "210.00", "the frozen wallet sent nothing")

        blocked = [e.get("message", "") for e in d.browser_log()
                   if "Content Security Policy" in e.get("message", "")]
        self.check(not blocked, "no page broke its Content-Security-Policy: " + "; ".join(blocked[:3]))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the wallet server, http://127.0.0.1:PORT")
    p.add_argument("--driver", required=True, help="chromedriver, http://127.0.0.1:PORT")
    p.add_argument("--admin", required=True, help="a staff username (its password in ADMIN_PASSWORD)")
    p.add_argument("--profile", required=True, help="a temporary directory for the browser profile")
    p.add_argument("--screenshots", nargs="?", const="docs/screenshots", default=None,
                   help="save screenshots of the main pages here (default docs/screenshots)")
    args = p.parse_args()
    run = None
    try:
        run = Run(args)
        run.main()
    except Failure as e:
        passed = run.passed if run else 0
        print(f"console browser test FAILED: {e}", file=sys.stderr)
        print(f"console: {passed} passed, 1 failed")
        return 1
    finally:
        if run:
            run.driver.quit()
    print(f"console: {run.passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
