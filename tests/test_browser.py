"""The report as a reader meets it: report.html rendered by headless Chromium at 800 px.

Every image must load, nothing may push the page wider than the window (wide tables scroll in their
own box), and the Conclusions section must be there. The check runs in the page itself: a script
appended to a copy of the report writes what it found into the DOM, which Chromium dumps.

Locally the test skips when no Chromium is installed, saying so; under CI (which installs Debian's
``chromium`` in .ci/run) a missing browser fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from conftest import on_ci

WIDTH = 800
CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const w = window.innerWidth;
  const wide = [...document.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > w + 1 && !e.closest('.scroll'))
    .slice(0, 5).map(e => e.tagName + ':' + Math.round(e.getBoundingClientRect().right));
  const out = {images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
               scrollWidth: document.documentElement.scrollWidth, innerWidth: w, wide: wide,
               conclusions: [...document.querySelectorAll('h2')].some(h => h.textContent.trim() === 'Conclusions')};
  const pre = document.createElement('pre'); pre.id = 'bayeslmm-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _browser() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.fixture(scope="module")
def rendered(study_run, tmp_path_factory):
    browser = _browser()
    if browser is None:
        if on_ci():
            pytest.fail("no Chromium: .ci/run installs Debian's chromium for this test")
        pytest.skip("no Chromium installed (apt-get install chromium); CI runs this test")
    page = tmp_path_factory.mktemp("browser") / "report.html"
    html = (study_run.out / "report.html").read_text(encoding="utf-8")
    page.write_text(html.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    out = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={WIDTH},1000",
                          "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="bayeslmm-check">([^<]*)</pre>', out.stdout)
    assert found, f"Chromium did not run the page's check (exit {out.returncode}): {out.stderr[-500:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_every_image_loads(rendered):
    assert rendered["images"] >= 15 and rendered["broken"] == 0


def test_nothing_overflows_a_narrow_window(rendered):
    assert rendered["innerWidth"] == WIDTH
    assert rendered["scrollWidth"] <= WIDTH and not rendered["wide"], rendered


def test_the_conclusions_are_there(rendered):
    assert rendered["conclusions"]
