"""Helpers for the browser tests (tests/test_browser*.py): a throw-away JupyterLab server and a few page actions
for Playwright.

The server runs from this Python environment (`python -m jupyter lab`) in its own process group, with every
Jupyter directory (config, runtime, data, IPython) inside one temporary folder, so that:
* no user settings leak in (the "news" prompt is switched off in the seeded settings);
* every process it starts (the server, its kernels) names that folder on its command line, and teardown can
  check that none is left (kernels run in their own sessions, so killing the server's group alone is not enough).
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts"  # screenshots and server logs of the browser tests

RUNNING_PROMPT = "[*]"
ERROR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def find_chromium() -> str | None:
    """Debian's chromium (apt-get install chromium), or any chromium on PATH."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SETUP_CELL = "model, tokenizer = kvlab.load_model("  # every notebook's setup cell loads the model this way


def clean_copy(notebook: pathlib.Path, target: pathlib.Path, code_cells: tuple[str, ...] | None = None) -> None:
    """Copy a notebook without its outputs and saved widget state, so that only a fresh run can draw widgets.

    `code_cells`: keep only the code cells whose source contains one of these strings, besides the parameters
    cell and the setup cell (the lab alone, for a browser test: nbval runs the whole notebook already)."""
    nb = json.loads(notebook.read_text())
    if code_cells is not None:
        wanted = (SETUP_CELL, *code_cells)
        kept = [c for c in nb["cells"] if c["cell_type"] != "code" or "parameters" in c["metadata"].get("tags", [])
                or any(w in "".join(c["source"]) for w in wanted)]
        found = {w for w in wanted if any(w in "".join(c["source"]) for c in kept if c["cell_type"] == "code")}
        assert found == set(wanted), f"{notebook.name} has no code cell with {sorted(set(wanted) - found)}"
        nb["cells"] = kept
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb["metadata"].pop("widgets", None)
    target.write_text(json.dumps(nb, indent=1))


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Live processes (other than this one) whose command line contains `text` — what `pgrep -f` finds."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(text in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


class JupyterLab:
    """`python -m jupyter lab` on a free port, no token, serving `root_dir`; state kept under `home`."""

    def __init__(self, root_dir: pathlib.Path, home: pathlib.Path):
        self.root_dir, self.home = root_dir, home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "jupyter-server.log"
        self.proc: subprocess.Popen | None = None
        self._seen: dict[int, psutil.Process] = {}  # every descendant ever seen, to kill at the end

    def start(self, timeout: float = 120.0) -> None:
        settings = self.home / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
        settings.mkdir(parents=True, exist_ok=True)
        (settings / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ)
        for name, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                          ("JUPYTER_DATA_DIR", "data"), ("IPYTHONDIR", "ipython")]:
            env[name] = str(self.home / sub)
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}", "--ip=127.0.0.1",
               "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
               "--LabApp.expose_app_in_browser=True", f"--ServerApp.root_dir={self.root_dir}",
               f"--LabApp.user_settings_dir={self.home / 'lab' / 'user-settings'}",
               f"--LabApp.workspaces_dir={self.home / 'lab' / 'workspaces'}"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=5) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def remember_descendants(self) -> None:
        """Note the server's children (kernels) now, while they are still its children."""
        if self.proc is None:
            return
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self._seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def stop(self) -> None:
        """Ask the server to shut down (it stops its kernels), then kill whatever is left, group by group."""
        if self.proc is None:
            return
        self.remember_descendants()
        if self.proc.poll() is None:
            try:
                request = urllib.request.Request(f"{self.url}/api/shutdown", method="POST", data=b"")
                urllib.request.urlopen(request, timeout=5).close()
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        # The server's own process group (it leads it: start_new_session), then each kernel's session.
        groups = {self.proc.pid}
        for proc in self._seen.values():
            try:
                groups.add(os.getpgid(proc.pid))
            except (ProcessLookupError, PermissionError):
                pass
        groups.discard(os.getpgid(0))  # never our own group
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self._seen.values():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        psutil.wait_procs(list(self._seen.values()), timeout=10)


# ---------------------------------------------------------------- page actions (Playwright sync API)

def wait_for_lab(page, timeout_ms: int = 120_000) -> None:
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=timeout_ms)
    page.evaluate("() => window.jupyterapp.restored")


def wait_kernel_idle(page, timeout_ms: int) -> None:
    """The current notebook's kernel is connected and idle."""
    page.wait_for_function(
        """() => {
            const w = window.jupyterapp.shell.currentWidget;
            const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
            return !!kernel && kernel.status === 'idle' && kernel.connectionStatus === 'connected';
        }""", timeout=timeout_ms, polling=250)


def dismiss_popups(page) -> None:
    """Close any toast (the "news" question, update notices) and a kernel-choice dialog if one shows up."""
    for label in ("No", "Dismiss"):
        for button in page.locator(".jp-toast-button", has_text=label).all():
            try:
                button.click(timeout=2000)
            except Exception:  # noqa: BLE001 — a toast may vanish by itself
                pass
    for close in page.locator(".Toastify__close-button").all():
        try:
            close.click(timeout=2000)
        except Exception:  # noqa: BLE001
            pass
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and "kernel" in dialog.first.inner_text().lower():
        dialog.locator(".jp-mod-accept").first.click()


def running_prompts(page) -> int:
    """Cells queued or running ("[*]:")."""
    return page.evaluate(
        "(p) => [...document.querySelectorAll('.jp-InputPrompt')].filter(e => e.textContent.includes(p)).length",
        RUNNING_PROMPT)


def error_outputs(page) -> list[str]:
    """Text of every output that shows a Python traceback."""
    return [text for text in page.locator(ERROR_OUTPUT).all_inner_texts() if "Traceback" in text]


def wait_all_cells_done(page, timeout_s: float) -> None:
    """Kernel idle and no cell still queued or running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if running_prompts(page) == 0:
            idle = page.evaluate("""() => {
                const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
                return k.status === 'idle'; }""")
            if idle:
                return
        time.sleep(0.5)
    raise TimeoutError(f"cells still running after {timeout_s:.0f} s")


def require_chromium() -> str:
    """Chromium's path, with the playwright package importable; otherwise skip — or fail under CI (env CI set),
    where .ci/run installs chromium and the browser tests must run."""
    import pytest

    def missing(reason: str) -> None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI is set, so the browser test must run (.ci/run installs chromium)")
        pytest.skip(reason)

    path = find_chromium()
    if path is None:
        missing("chromium not found (/usr/bin/chromium or on PATH): apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[test]')")
    return path


def repo_notebook(name: str) -> pathlib.Path:
    """notebooks/<name>, or skip the test when it is not there."""
    import pytest

    path = NOTEBOOKS / name
    if not path.is_file():
        pytest.skip(f"notebook not present: notebooks/{name}")
    return path


@contextlib.contextmanager
def lab_for_test(tmp_path_factory, notebook: pathlib.Path, artifact_prefix: str, server_log: str,
                 code_cells: tuple[str, ...] | None = None):
    """A test's JupyterLab (lab_serving in a fresh temporary home) after deleting the screenshots an earlier run
    left in test-artifacts/ under `artifact_prefix`; the server's log is kept there as `server_log`.
    `code_cells`: as clean_copy's (None: the whole notebook)."""
    for stale in ARTIFACTS.glob(f"{artifact_prefix}_*.png"):
        stale.unlink()
    home = tmp_path_factory.mktemp("kvlab-browser")
    with lab_serving(NOTEBOOKS, notebook, home, ARTIFACTS / server_log, code_cells) as server:
        yield server


@contextlib.contextmanager
def lab_serving(notebooks: pathlib.Path, notebook: pathlib.Path, home: pathlib.Path, server_log: pathlib.Path,
                code_cells: tuple[str, ...] | None = None):
    """JupyterLab on a clean copy of the `notebooks` folder in `home` (with `notebook`'s outputs cleared, and only
    `code_cells` kept if given); its log is copied to `server_log` afterwards, and nothing it started may be left
    running."""
    root = home / "notebooks"
    shutil.copytree(notebooks, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    clean_copy(notebook, root / notebook.name, code_cells)
    # The test's copy (outputs cleared, cells cut) is not its jupytext source any more: without the source, jupytext
    # opens the notebook as it is instead of refusing a notebook newer than, and different from, its source.
    (root / "src" / f"{notebook.stem}.py").unlink(missing_ok=True)
    with serving(JupyterLab(root, home), server_log) as server:
        yield server


@contextlib.contextmanager
def serving(server: JupyterLab, server_log: pathlib.Path):
    """`server` started; afterwards stopped, its log copied to `server_log`, and nothing it started left running."""
    try:
        server.start()
        yield server
    finally:
        server.stop()
        if server.log_path.exists():
            server_log.parent.mkdir(exist_ok=True)
            shutil.copyfile(server.log_path, server_log)
        leftovers = processes_mentioning(str(server.home))
        for proc in leftovers:
            proc.kill()
        assert not leftovers, f"processes left running after teardown: {[p.info['cmdline'] for p in leftovers]}"


def start_run_all(page) -> None:
    """Focus a cell (run-all may do nothing otherwise), then run all; retry once if nothing starts."""
    import pytest

    for _attempt in range(2):
        dismiss_popups(page)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.keyboard.press("Escape")  # command mode
        page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            started = page.evaluate(
                "() => [...document.querySelectorAll('.jp-InputPrompt')].some(e => /\\[(\\*|\\d+)\\]/.test(e.textContent))")
            if started:
                return
            time.sleep(0.5)
    pytest.fail("notebook:run-all-cells started no cell")


@contextlib.contextmanager
def browser_page(chromium: str, viewport_height: int, failure_screenshot: pathlib.Path):
    """A page of headless Chromium, 1400 px wide. If the body fails, a full-page screenshot goes to
    `failure_screenshot` before the failure propagates; the browser is closed either way."""
    from playwright.sync_api import sync_playwright

    failure_screenshot.parent.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": viewport_height})
        try:
            yield page
        except BaseException:
            try:
                page.screenshot(path=failure_screenshot, full_page=True)
            except Exception:  # noqa: BLE001 — keep the original failure
                pass
            raise
        finally:
            browser.close()


def open_and_run_all(page, lab: JupyterLab, notebook: pathlib.Path, run_timeout_s: float, wait_for_widget) -> float:
    """Open `notebook` in `lab`, run all its cells, wait until `wait_for_widget(page, lab)` returns and every cell
    has finished, and fail on any traceback. Returns the seconds run-all took."""
    page.goto(f"{lab.url}/lab/tree/{notebook.name}", timeout=120_000)
    wait_for_lab(page)
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    wait_kernel_idle(page, timeout_ms=120_000)
    lab.remember_descendants()
    started = time.monotonic()
    start_run_all(page)
    wait_for_widget(page, lab)
    wait_all_cells_done(page, run_timeout_s)
    lab.remember_descendants()
    assert not error_outputs(page), "cells raised:\n" + "\n\n".join(error_outputs(page))
    return time.monotonic() - started


def screenshot_widget(page, widget, path: pathlib.Path, settle_s: float = 1.5) -> None:
    """The widget alone, scrolled into view, with the mouse off it (no hover modebar) and plotly's layout settled."""
    widget.scroll_into_view_if_needed()
    page.mouse.move(0, 0)
    time.sleep(settle_s)
    widget.screenshot(path=path)
