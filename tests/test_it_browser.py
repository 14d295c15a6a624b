"""A person's path through the dashboard, in Debian's Chromium driven by Playwright, against the real
platform (`manage.py up`: daphne, a Celery worker, supervisord, the embedded Redis)."""

import os
import re
import shutil
import subprocess
import urllib.error
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.conftest import Platform, free_port, http_get, wait_until

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def platform(tmp_path: Path):
    """Team mode (DIPLOI_ALLOW_UNCONFINED=1): a new user signs up on this unconfined machine."""
    p = Platform(tmp_path / "data", free_port(), teams=True)
    yield p
    p.kill()


def log_in_as_demo(browser, base: str, password: str):
    """A page logged in as the demo account, through the login form."""
    page = browser.new_context(base_url=base).new_page()
    page.goto("/accounts/login/")
    assert_accessible(page)
    page.fill("input[name=login]", "demo")
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url("**/projects/")
    return page


def assert_accessible(page) -> None:
    """axe-core finds nothing serious or critical on the page as it is now."""
    from axe_playwright_python.sync_playwright import Axe

    found = Axe().run(page).response["violations"]
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{page.url}:\n" + "\n".join(bad)


def test_the_accessibility_check_reports_what_is_serious(browser) -> None:
    """The check the pages pass fails on what axe-core calls serious or critical (and lets a moderate one be)."""
    page = browser.new_page()
    page.set_content('<html lang="en"><title>t</title><main><h1>Fine</h1><p style="color:#777;background:#888">faint</p></main></html>')
    with pytest.raises(AssertionError, match="color-contrast"):
        assert_accessible(page)
    page.set_content('<html lang="en"><title>t</title><main><h1>Fine</h1><img src="x.png"></main></html>')
    with pytest.raises(AssertionError, match="image-alt"):
        assert_accessible(page)
    page.set_content('<html lang="en"><title>t</title><main><h1>Fine</h1><h3>skipped a level</h3></main></html>')  # moderate
    assert_accessible(page)


def reload_until(page, text: str, timeout: float = 120) -> None:
    """What a person does before live updates exist: reload until the page says so."""
    wait_until(lambda: page.reload() and text in page.content(), timeout=timeout, interval=1, what=f"“{text}” on {page.url}")


def test_a_new_user_deploys_the_demo_project(platform: Platform, browser, tmp_path: Path) -> None:
    base = platform.wait_for(r"Diploi is running at (http://\S+)").group(1).rstrip("/")
    demo_password = platform.wait_for(r"username: demo password: (\S+)").group(1)
    platform.wait_for(r"celery@\S+ ready")

    # A new user signs up and adds an SSH key.
    ada = browser.new_context(base_url=base, permissions=["clipboard-read", "clipboard-write"], viewport={"width": 1280, "height": 900})
    page = ada.new_page()
    page.goto("/accounts/signup/")
    assert_accessible(page)
    page.fill("input[name=email]", "ada@example.com")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password1]", "analytical-engine-1843")
    page.fill("input[name=password2]", "analytical-engine-1843")
    page.click("button[type=submit]")
    page.wait_for_url("**/projects/")
    # The projects page greets her with first steps, none done yet.
    assert page.inner_text("#first-steps-title") == "First steps" and page.locator(".first-steps li.done").count() == 0
    assert_accessible(page)
    private = ed25519.Ed25519PrivateKey.generate()
    key_file = tmp_path / "ada_ed25519"
    key_file.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    key = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode() + " ada@laptop"
    page.goto("/account/keys/")
    assert_accessible(page)
    page.fill("textarea[name=public_key]", key)
    page.click("button:has-text('Continue')")
    # She runs the signing command the page shows, in her own shell, with her key file, and pastes its output.
    command = page.text_content("#sign-command").replace("~/.ssh/id_ed25519", str(key_file))
    signature = subprocess.run(["bash", "-c", command], capture_output=True, text=True, check=True).stdout
    page.fill("textarea[name=signature]", signature)
    page.click("button:has-text('Add key')")
    page.wait_for_selector("text=SHA256:")

    # Back on the projects page the key step has ticked itself; she tries the demo: her own copy,
    # which goes green, after which the first steps are done and gone.
    page.goto("/projects/")
    assert page.locator(".first-steps li.done").all_inner_texts()[0].startswith("✓")
    page.click("button:has-text('Try the demo')")
    page.wait_for_url("**/projects/diploi-sample-ada/d/dev/")
    page.evaluate("""window.words = []; setInterval(() => { const w = document.querySelector('.overall strong').textContent;
        if (window.words.at(-1) !== w) window.words.push(w); }, 50);""")
    page.wait_for_function("document.querySelector('.overall strong').textContent === 'Running'", timeout=120_000)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = dict(re.findall(r"^\| \*\*(\w+)\*\* \| (\w+) \|", readme, re.M))  # "Status words": word → colour
    for word in page.evaluate("window.words"):  # each word she saw, in its table colour
        assert word in table, word
    dot = page.get_attribute(".overall .dot", "class")
    assert table["Running"] in dot, dot
    assert_accessible(page)

    # The resource graphs fill in while she watches (pushed, no reload), show values under the pointer,
    # and switch windows, also from the keyboard.
    graphs = "[data-usage-url]"
    page.wait_for_function(f"Number(document.querySelector('{graphs}').dataset.points) >= 2", timeout=90_000)
    for kind in ("cpu", "memory"):
        assert page.locator(f"{graphs} [data-graph={kind}] canvas").count() == 1
    over = page.locator(f"{graphs} [data-graph=memory] .u-over")
    box = over.bounding_box()
    over.hover(position={"x": box["width"] - 2, "y": box["height"] / 2})
    legend = page.locator(f"{graphs} [data-graph=memory] .u-legend").text_content()
    assert "web" in legend and "redis" in legend and re.search(r"\d+\.\d MiB", legend), legend
    page.click(f"{graphs} button:has-text('7 days')")
    page.wait_for_function(f"document.querySelector('{graphs}').dataset.shown === '7d'")
    assert page.get_attribute(f"{graphs} [data-window='7d']", "aria-pressed") == "true"
    assert int(page.get_attribute(graphs, "data-points")) >= 2  # what is not averaged yet is drawn too
    for _ in range(80):  # Tab to "1 min", then Enter
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.window") == "1m":
            break
    page.keyboard.press("Enter")
    page.wait_for_function(f"document.querySelector('{graphs}').dataset.shown === '1m'")
    assert_accessible(page)

    for url in (
        "/projects/diploi-sample-ada/d/dev/options/",
        "/projects/diploi-sample-ada/d/dev/clone/",
        "/projects/diploi-sample-ada/push/",
        "/projects/diploi-sample-ada/settings/",
        "/accounts/password/change/",
    ):
        page.goto(url)
        assert_accessible(page)
    page.goto("/projects/")
    assert page.locator("#first-steps-title").count() == 0 and "diploi-sample-ada" in page.content()
    assert_accessible(page)

    # The demo project's owner invites her as an owner too, and she accepts on her Projects page.
    demo = log_in_as_demo(browser, base, demo_password)
    demo.goto("/projects/diploi-sample/settings/")
    assert_accessible(demo)
    demo.fill("input[name=who]", "ada")
    demo.select_option("#id_role", "owner")
    demo.click("button:has-text('Invite')")
    demo.wait_for_selector("#invitation-link")
    page.goto("/projects/")
    page.wait_for_selector("text=invites you to")
    page.click("button:has-text('Accept')")
    page.wait_for_url("**/projects/diploi-sample/")
    demo.reload()
    demo.wait_for_selector("text=ada@example.com")

    # She opens the demo project and creates a development deployment.
    page.goto("/projects/")
    page.click("text=Diploi sample")
    assert_accessible(page)
    page.click("text=New deployment")
    assert_accessible(page)
    page.fill("input[name=name]", "dev")
    page.select_option("select[name=stage]", "development")
    page.click("button:has-text('Create deployment')")
    page.wait_for_url("**/d/dev/")
    reload_until(page, "<strong>Running</strong>")
    page.wait_for_selector("text=HTTP 200 on /")
    assert_accessible(page)

    # Its endpoint answers.
    endpoint = page.get_attribute(f"#deployment-{_id(page)}-hosts a", "href")
    site = ada.new_page()
    site.goto(endpoint)
    assert "Visits:" in site.content()

    # The SSH command is copied with the keyboard.
    page.focus("button[data-copy='#ssh-web']")
    page.keyboard.press("Enter")
    page.wait_for_selector("button[data-copy='#ssh-web']:has-text('Copied')")
    command = page.evaluate("navigator.clipboard.readText()")
    assert command == f"ssh -p {platform.ssh_port} dev.diploi-sample@localhost"  # her demo copy has a "dev" too

    # And it works, pasted into a terminal (with her key and a throwaway known-hosts file).
    if shutil.which("ssh"):
        options = [
            "-i",
            str(key_file),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={tmp_path / 'known'}",
        ]
        argv = command.split()
        result = subprocess.run([argv[0], *options, *argv[1:], "echo $GREETING from $(pwd)"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("Hello from Diploi from /") and result.stdout.rstrip().endswith("/code/web")
        page.reload()
        page.wait_for_selector("text=Recent sessions")
    page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)  # the README's picture
    if target := os.environ.get("DIPLOI_SCREENSHOT"):
        shutil.copy(tmp_path / "overview.png", target)

    # An env var restarts the component with it.
    page.click("nav[aria-label=Deployment] >> text=Options")
    assert_accessible(page)
    page.fill("#options-env input[name=key]", "GREETING")
    page.fill("#options-env input[name=value]", "Hello from the browser")
    page.click("text=Save and restart")
    page.wait_for_selector("text=GREETING saved")
    wait_until(lambda: "Hello from the browser" in http_get(endpoint), timeout=60, what="the component to restart with the value")

    # She clones it; the clone runs beside it.
    page.click("text=Clone…")
    page.fill("input[name=name]", "dev-copy")
    page.click("text=Create the clone")
    page.wait_for_url("**/d/dev-copy/")
    reload_until(page, "<strong>Running</strong>")
    clone_endpoint = page.get_attribute(f"#deployment-{_id(page)}-hosts a", "href")
    assert "Hello from the browser" in http_get(clone_endpoint)

    # And deletes the clone by typing its name.
    page.click("nav[aria-label=Deployment] >> text=Options")
    page.fill("#options-danger input[name=confirm]", "dev-copy")
    page.click("button:has-text('Delete deployment')")
    page.wait_for_url("**/projects/diploi-sample/")
    wait_until(
        lambda: page.reload() and "dev-copy" not in page.inner_text("main table"), timeout=60, interval=1, what="the clone to disappear"
    )
    assert "dev" in page.inner_text("main table")
    with pytest.raises(OSError):
        http_get(clone_endpoint, timeout=2)
    assert "Visits:" in http_get(endpoint)  # the source is untouched


def _id(page) -> str:
    return re.search(r'id="deployment-(\d+)-status"', page.content()).group(1)


def test_the_overview_updates_itself(platform: Platform, browser, tmp_path: Path) -> None:
    import threading

    base = platform.wait_for(r"Diploi is running at (http://\S+)").group(1).rstrip("/")
    password = platform.wait_for(r"username: demo password: (\S+)").group(1)
    platform.wait_for(r"celery@\S+ ready")
    page = log_in_as_demo(browser, base, password)
    page.goto("/projects/diploi-sample/deployments/new/")
    page.fill("input[name=name]", "live")
    page.click("button:has-text('Create deployment')")
    page.wait_for_url("**/d/live/")
    pk = _id(page)
    status = f"#deployment-{pk}-status .overall strong"

    loads = []
    page.on("load", lambda: loads.append(1))
    # Provisioning → Running arrives over the websocket: no reload.
    page.wait_for_function(f"document.querySelector('{status}').textContent === 'Running'", timeout=90_000)

    app = next(p for p in platform.descendants() if p.name().startswith("python") and "app.py" in " ".join(p.cmdline()))
    app.kill()
    page.wait_for_function(f"document.querySelector('{status}').textContent !== 'Running'", timeout=30_000)
    page.wait_for_function(f"document.querySelector('{status}').textContent === 'Running'", timeout=60_000)
    page.wait_for_selector(f"#deployment-{pk}-tree >> text=restarted 1×")

    # CPU moves while the app is busy.
    endpoint = page.get_attribute(f"#deployment-{pk}-hosts a", "href")
    figure = f"#deployment-{pk}-cpu .figure"
    before = page.inner_text(figure)
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                http_get(endpoint, timeout=2)
            except OSError:
                pass

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        page.wait_for_function(f"document.querySelector('{figure}').textContent !== {before!r}", timeout=30_000)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    assert loads == []  # all of it without a reload

    # Following the log shows a line the app prints.
    page.goto("/projects/diploi-sample/d/live/logs/?service=web&follow=1")
    try:
        http_get(endpoint + "/?marker=followed-line")
    except urllib.error.HTTPError:  # the sample answers 404 to a query string; the request is logged all the same
        pass
    page.wait_for_selector(f"#deployment-{pk}-log >> text=followed-line", timeout=15_000)
    assert_accessible(page)

    # A production build's progress bar advances live to 100. The install step is made slow enough to watch.
    repo = tmp_path / "data" / "repos" / "diploi-sample"
    package = (Path(__file__).parent.parent / "projects" / "packages" / "python.yaml").read_text()
    install = re.search(r"^  install: .*\n(?:    .*\n)*", package, re.M).group(0)  # (with its folded lines)
    (repo / "web" / "diploi.yaml").write_text(
        package.replace(install, '  install: "for i in 1 2 3 4 5 6; do echo installing $i; sleep 0.5; done"\n')
    )
    (repo / "diploi.yaml").write_text((repo / "diploi.yaml").read_text().replace("package: python", "package: ./web"))
    git = ["git", "-C", str(repo), "-c", "user.name=Ada", "-c", "user.email=ada@example.com"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "A slower install"], check=True)

    page.goto("/projects/diploi-sample/deployments/new/")
    page.fill("input[name=name]", "prod")
    page.select_option("select[name=stage]", "production")
    page.click("button:has-text('Create deployment')")
    page.wait_for_url("**/d/prod/")
    prod = _id(page)
    loads.clear()
    bar = f"#deployment-{prod}-tree [role=progressbar]"
    page.evaluate(f"""window.seen = []; setInterval(() => {{
        const bar = document.querySelector('{bar}'); if (bar) window.seen.push(Number(bar.getAttribute('aria-valuenow'))); }}, 50);""")
    page.wait_for_function(f"document.querySelector('{bar}')?.getAttribute('aria-valuenow') === '100'", timeout=120_000)
    seen = page.evaluate("window.seen")
    assert any(0 < v < 100 for v in seen), seen  # it moved while the page was open
    assert seen == sorted(seen)  # and only forward
    page.wait_for_function(f"document.querySelector('#deployment-{prod}-status .overall strong').textContent === 'Running'", timeout=90_000)
    assert loads == []


def test_a_push_shows_its_build_then_its_release_without_a_reload(browser, tmp_path: Path) -> None:
    """Polling finds the push (the demo repository cannot call back); the Overview follows it live."""
    from projects.sample import commit_all

    data = tmp_path / "data"
    platform = Platform(data, free_port(), env={"DIPLOI_POLL_INTERVAL": "2"})
    try:
        base = platform.wait_for(r"Diploi is running at (http://\S+)").group(1).rstrip("/")
        password = platform.wait_for(r"username: demo password: (\S+)").group(1)
        platform.wait_for(r"celery@\S+ ready")
        page = log_in_as_demo(browser, base, password)
        page.goto("/projects/diploi-sample/deployments/new/")
        page.fill("input[name=name]", "stage")
        page.select_option("select[name=stage]", "staging")
        page.click("button:has-text('Create deployment')")
        page.wait_for_url("**/d/stage/")
        pk = _id(page)
        status = f"#deployment-{pk}-status .overall strong"
        page.wait_for_function(f"document.querySelector('{status}').textContent === 'Running'", timeout=180_000)

        loads = []
        page.on("load", lambda: loads.append(1))
        repo = data / "repos" / "diploi-sample"
        (repo / "CHANGES").write_text("pushed while watching\n")
        pushed = commit_all(repo, "Pushed while watching")
        page.wait_for_selector(f"#deployment-{pk}-build:has-text('{pushed[:10]}')", timeout=60_000)
        row = f"#deployment-{pk}-releases tbody tr:first-child"
        page.wait_for_selector(f"{row}:has-text('{pushed[:10]}') .badge:text-is('running')", timeout=180_000)  # the one running now
        assert "new commit found by polling" in page.inner_text(row)
        page.screenshot(path=str(tmp_path / "releases.png"), full_page=True)
        assert loads == []

        # Roll back from the live card (its forms post with the page's CSRF header), then resume.
        page.click(f"#deployment-{pk}-releases tbody tr:nth-child(2) button:has-text('Roll back')")
        page.wait_for_selector(f"#deployment-{pk}-releases .banner:has-text('Pinned to')", timeout=60_000)
        page.wait_for_selector(f"{row}:has-text('rollback to') .badge:text-is('running')", timeout=60_000)
        page.click(f"#deployment-{pk}-releases button:has-text('Resume')")
        page.wait_for_selector(
            f"{row}:has-text('{pushed[:10]}'):has-text('deploy latest by demo') .badge:text-is('running')", timeout=60_000
        )
        assert page.locator(f"#deployment-{pk}-releases .banner").count() == 0
        assert_accessible(page)  # with releases, a rollback's history and a build's log
        page.goto(page.get_attribute(f"{row} a[href*='/releases/']", "href"))
        assert_accessible(page)
    finally:
        platform.kill()


def test_the_dashboard_and_a_deployment_through_the_router_over_https(tmp_path: Path) -> None:
    """`up` with its router: the dashboard at https://localhost:<port>, its live updates over the websocket
    through the router, a deployment at its own name, and every route back after the router is killed;
    Chromium trusts the router's CA as a user would (it is in its certificate store, nothing is ignored)."""
    import signal

    import psutil
    from playwright.sync_api import sync_playwright

    from tests.conftest import https_request

    https_port = free_port()
    platform = Platform(tmp_path / "data", free_port(), teams=True, env={"DIPLOI_ROUTER": "caddy", "DIPLOI_HTTPS_PORT": str(https_port)})
    try:
        base = platform.wait_for(r"Diploi is running at (https://\S+)").group(1).rstrip("/")
        assert base == f"https://localhost:{https_port}"
        password = platform.wait_for(r"username: demo password: (\S+)").group(1)
        root = tmp_path / "data" / "router" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        assert str(root) in platform.output()  # the box says what to trust
        home = tmp_path / "home"
        (home / ".pki" / "nssdb").mkdir(parents=True)
        nssdb = f"sql:{home / '.pki' / 'nssdb'}"
        subprocess.run(["certutil", "-d", nssdb, "-N", "--empty-password"], check=True)
        subprocess.run(["certutil", "-d", nssdb, "-A", "-t", "C,,", "-n", "diploi", "-i", str(root)], check=True)
        platform.wait_for(r"celery@\S+ ready")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, env={**os.environ, "HOME": str(home)})
            page = log_in_as_demo(browser, base, password)
            page.goto("/projects/diploi-sample/deployments/new/")
            page.fill("input[name=name]", "routed")
            page.click("button:has-text('Create deployment')")
            page.wait_for_url("**/d/routed/")
            loads = []
            page.on("load", lambda: loads.append(1))
            status = f"#deployment-{_id(page)}-status .overall strong"
            page.wait_for_function(f"document.querySelector('{status}').textContent === 'Running'", timeout=90_000)
            assert not loads  # it arrived over the websocket, through the router
            endpoint = page.locator(f"#deployment-{_id(page)}-hosts a").first.get_attribute("href")
            assert endpoint == f"https://routed--diploi-sample.localhost:{https_port}"
            page.screenshot(path=str(tmp_path / "routed-overview.png"), full_page=True)
            if target := os.environ.get("DIPLOI_SCREENSHOT"):  # the README's second picture, beside the first
                shutil.copy(tmp_path / "routed-overview.png", Path(target).with_name("overview-https.png"))
            app = browser.new_page()
            app.goto(endpoint)
            assert "Visits:" in app.content()

            router = next(c for c in platform.descendants() if "caddy" in " ".join(c.cmdline()))
            router.send_signal(signal.SIGKILL)  # supervisord starts it again; the monitor gives it its routes
            psutil.wait_procs([router], timeout=10)
            wait_until(
                lambda: https_request(https_port, "routed--diploi-sample.localhost", cafile=root)[0] == 200,
                timeout=60,
                what="the route back",
            )
            app.goto(endpoint)
            assert "Visits:" in app.content()
            browser.close()
        assert platform.stop() == 0
    finally:
        platform.kill()
