"""The upload page in Debian's headless chromium (Selenium 4), against a real `fruitpipe serve` process.

The browser is Debian's chromium, started by tests/browser.py (nothing is downloaded).
"""
from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import browser_driver
from fruitpipe.devtools.serveprocess import running_server
from fruitpipe.recognise.bundle import Bundle

pytestmark = pytest.mark.slow
WAIT_GUARD_S = 120  # a guard against a hung page, not a measurement
DROP_FILE = """
const [encoded, name, type] = arguments;
const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, { type }));
document.getElementById("drop-zone").dispatchEvent(
  new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
"""


@pytest.fixture(scope="module")
def page_server(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(trained_bundle, tmp_path_factory.mktemp("page-server")) as server_process:
        yield server_process.base_url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with browser_driver(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def wait_for(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_GUARD_S).until(condition)


def open_page(driver, base_url: str) -> None:
    driver.get(f"{base_url}/")
    wait_for(driver, lambda d: d.find_element("id", "model").text.startswith("Model "))


def shown_predictions(driver) -> list[tuple[str, float]]:
    """(label, probability) of each list item once the result is on screen."""
    items = wait_for(driver, lambda d: d.find_elements("css selector", "#predictions li") or False)
    return [(item.get_attribute("data-label"), float(item.get_attribute("data-probability"))) for item in items]


def csp_violations(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if "Content Security Policy" in entry["message"]]


def test_page_is_accessible_and_self_contained(browser, page_server: str) -> None:
    open_page(browser, page_server)
    file_input = browser.find_element("id", "file")
    label = browser.find_element("css selector", "label[for=file]")
    assert label.text == "Choose a photo" and file_input.get_attribute("accept").startswith("image/")
    assert browser.find_element("id", "error").get_attribute("role") == "alert"
    assert browser.find_element("id", "preview").get_attribute("alt")
    # every resource came from this server: nothing fetched from the internet
    urls = browser.execute_script("return performance.getEntriesByType('resource').map((r) => r.name)")
    assert urls and all(url.startswith(page_server) for url in urls), urls
    assert csp_violations(browser) == []


def test_chosen_photo_is_classified(browser, page_server: str, trained_bundle: Path, sample_dir: Path) -> None:
    photo = sorted((sample_dir / "Test" / "Banana").glob("*.jpg"))[0]
    expected = Bundle.load(trained_bundle).predict_bytes(photo.read_bytes(), top_k=5)
    open_page(browser, page_server)
    browser.find_element("id", "file").send_keys(str(photo))
    shown = shown_predictions(browser)
    assert [label for label, _ in shown] == [p.label for p in expected]
    assert all(abs(value - p.probability) <= 1e-5 for (_, value), p in zip(shown, expected, strict=True))
    assert expected[0].label == "Banana"
    assert browser.find_element("id", "status").text.startswith("Most likely: Banana")
    assert browser.find_element("id", "preview").get_attribute("src").startswith("blob:")
    assert browser.find_element("id", "error").is_displayed() is False
    bars = browser.find_elements("css selector", "#predictions .bar")
    assert bars[0].get_attribute("aria-label").startswith("Banana: ")
    assert csp_violations(browser) == []


def test_dropped_photo_is_classified(browser, page_server: str, trained_bundle: Path, sample_dir: Path) -> None:
    photo = sorted((sample_dir / "Test" / "Cherry").glob("*.jpg"))[0]
    expected = Bundle.load(trained_bundle).predict_bytes(photo.read_bytes(), top_k=5)
    open_page(browser, page_server)
    browser.execute_script(DROP_FILE, base64.b64encode(photo.read_bytes()).decode(), photo.name, "image/jpeg")
    assert [label for label, _ in shown_predictions(browser)] == [p.label for p in expected]
    assert browser.find_element("id", "filename").text == photo.name


def test_invalid_file_shows_the_server_error(browser, page_server: str, tmp_path: Path) -> None:
    not_a_photo = tmp_path / "shopping list.jpg"
    not_a_photo.write_text("apples, pears, cherries\n")
    open_page(browser, page_server)
    browser.find_element("id", "file").send_keys(str(not_a_photo))
    error = wait_for(browser, lambda d: d.find_element("id", "error") if d.find_element("id", "error").is_displayed()
                     else False)
    assert "shopping list.jpg" in error.text and "422" in error.text and "not an image" in error.text, error.text
    assert browser.find_elements("css selector", "#predictions li") == []


def shown_status(driver, prefix: str):
    return wait_for(driver, lambda d: d.find_element("id", "status")
                    if d.find_element("id", "status").text.startswith(prefix) else False)


def test_page_says_not_sure_below_the_threshold(browser, unsure_server: str, trained_bundle: Path,
                                                unsure_photos: dict[str, Path]) -> None:
    model = Bundle.load(trained_bundle)
    first, second = model.predict_bytes(unsure_photos["noise"].read_bytes(), top_k=2)
    open_page(browser, unsure_server)
    assert '"not sure" below' in browser.find_element("id", "model").text
    browser.find_element("id", "file").send_keys(str(unsure_photos["noise"]))
    status = shown_status(browser, "Not sure")
    shown = [f"{p.label} ({100 * p.probability:.1f}%)" for p in (first, second)]
    why = " (it does not look like a fruit)" if model.answer_bytes(
        unsure_photos["noise"].read_bytes()).reason == "not a fruit" else ""
    assert status.text == f"Not sure: maybe {shown[0]} or {shown[1]}{why}"  # in words, not only a colour
    assert "unsure" in status.get_attribute("class")
    assert [label for label, _ in shown_predictions(browser)][:2] == [first.label, second.label]
    browser.find_element("id", "file").send_keys(str(unsure_photos["banana"]))  # above the threshold: answered
    status = shown_status(browser, "Most likely")
    assert status.text.startswith("Most likely: Banana") and "unsure" not in (status.get_attribute("class") or "")
    assert csp_violations(browser) == []
