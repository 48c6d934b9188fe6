"""The browser app: its actions against the Python API, its endpoints through gradio_client on a
launched local server, and one run in a real headless Chromium (skipped without one)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import spy_instructions

import rsvlm
from rsvlm.app import actions
from rsvlm.io.pictures import composite_or_stretch


@pytest.fixture(scope="module")
def predictor(run_folder):
    # RSVLM_APP_MODEL: another model for the same tests (the README's screenshot uses the demo's).
    return rsvlm.load(os.environ.get("RSVLM_APP_MODEL") or run_folder)


@pytest.fixture(scope="module")
def page_scene(scene) -> Path:
    """The scene the browser uploads (RSVLM_APP_SCENE overrides it for the README's screenshot)."""
    return Path(os.environ.get("RSVLM_APP_SCENE") or scene)


@pytest.fixture
def one_band(tmp_path) -> Path:
    path = tmp_path / "one_band.tif"
    with rasterio.open(path, "w", driver="GTiff", height=16, width=16, count=1, dtype="float32") as dst:
        dst.write(np.ones((1, 16, 16), np.float32))
    return path


def test_preview_is_the_composite_of_the_scene(scene, predictor, one_band):
    with rasterio.open(scene) as src:
        data = src.read()
    expected = composite_or_stretch(data, predictor.bands, "auto")
    np.testing.assert_array_equal(actions.preview(str(scene), predictor.bands), expected)
    false_colour = actions.preview(str(scene), predictor.bands, "false")
    np.testing.assert_array_equal(false_colour, composite_or_stretch(data, predictor.bands, "false"))
    assert actions.preview(str(one_band), predictor.bands).shape == (16, 16, 3)  # any band count: grey
    (one_band.parent / "broken.tif").write_bytes(b"not a raster")
    with pytest.raises(actions.AppError, match="broken.tif"):
        actions.preview(str(one_band.parent / "broken.tif"), predictor.bands)


def test_mark_points_draws_squares_at_x_y():
    picture = np.zeros((10, 12, 3), np.uint8)
    marked = actions.mark_points(picture, [(11, 0)], radius=1)
    assert (marked[0:2, 10:12] == (255, 255, 0)).all() and marked.sum() == 4 * (255 + 255)


def test_run_gives_the_api_answer_and_the_predict_files(scene, predictor, tmp_path):
    picture, answer, files = actions.run(predictor, str(scene), actions.TASKS[0], "water", None, out_dir=tmp_path)
    expected = predictor.predict(str(scene), category="water")
    np.testing.assert_array_equal(picture, expected.show())
    assert answer == "\n".join(f"tile {i}: {t}" for i, t in enumerate(expected.texts))
    saved = expected.save(tmp_path / "api")
    assert [Path(f).name for f in files] == [saved[k].name for k in ("mask", "overlay", "json")]
    assert Path(files[0]).read_bytes() == saved["mask"].read_bytes()
    _, with_points, _ = actions.run(predictor, str(scene), actions.TASKS[0], "water", None, [(3, 4)], tmp_path)
    assert with_points.endswith("(points ignored: this model takes no visual prompts)")


def test_run_errors_are_one_line_messages(scene, predictor, one_band):
    with pytest.raises(actions.AppError, match="upload a scene"):
        actions.run(predictor, None, actions.TASKS[0], "water", None)
    with pytest.raises(actions.AppError, match="type a question"):
        actions.run(predictor, str(scene), actions.TASKS[1], None, "  ")
    with pytest.raises(actions.AppError, match="type an expression"):
        actions.run(predictor, str(scene), actions.TASKS[2], None, "")
    with pytest.raises(actions.AppError, match=r"one_band\.tif.*1 band") as err:
        actions.run(predictor, str(one_band), actions.TASKS[0], "water", None)
    assert "\n" not in str(err.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(predictor):
    gr = pytest.importorskip("gradio", reason='the app needs Gradio: pip install "rsvlm[app]"')
    from rsvlm.app.ui import build_app

    page = build_app(predictor)
    port = _free_port()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    assert isinstance(page, gr.Blocks)
    yield f"http://127.0.0.1:{port}/"
    page.close()


def test_endpoints_through_gradio_client(server, scene, predictor):
    from gradio_client import Client, handle_file

    client = Client(server, verbose=False)
    overlay_path, answer, files = client.predict(
        handle_file(str(scene)), actions.TASKS[0], "water", "", api_name="/run"
    )
    expected = predictor.predict(str(scene), category="water")
    assert answer.startswith("tile 0: ") and expected.texts[0] in answer
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(overlay_path).convert("RGB")), expected.show())
    assert sorted(Path(f if isinstance(f, str) else f["path"]).suffix for f in files) == [".json", ".png", ".tif"]
    with pytest.raises(Exception, match="type a question"):
        client.predict(handle_file(str(scene)), actions.TASKS[1], "water", "", api_name="/run")


def _chromium() -> tuple[str, str] | None:
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.skipif(
    _chromium() is None, reason="no Chromium + chromedriver on PATH (Debian: apt install chromium chromium-driver)"
)
def test_a_real_browser_uploads_clicks_runs_and_sees_the_answer(server, page_scene, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason='needs Selenium: pip install "rsvlm[app]"')
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(server)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#scene-file input[type=file]")))
        upload.send_keys(str(page_scene))
        picture = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#scene-picture img")))
        picture.click()  # a point in the middle of the scene
        driver.find_element(By.CSS_SELECTOR, "#run").click()
        wait.until(lambda d: "tile 0:" in d.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value"))
        answer = driver.find_element(By.CSS_SELECTOR, "#answer textarea").get_attribute("value")
        assert "points ignored" in answer
        overlay = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#overlay img")))
        assert overlay.get_attribute("src")
        shot = Path(os.environ.get("RSVLM_APP_SCREENSHOT", tmp_path / "app.png"))
        shot.parent.mkdir(parents=True, exist_ok=True)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()


def test_a_referring_expression_becomes_the_segmentation_instruction(scene, predictor, monkeypatch, tmp_path):
    seen = spy_instructions(monkeypatch, predictor.model)
    actions.run(predictor, str(scene), actions.TASKS[2], None, "the white building by the river.", out_dir=tmp_path)
    assert set(seen) == {"Please segment the white building by the river in this image."}
