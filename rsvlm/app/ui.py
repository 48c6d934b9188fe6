"""The Gradio page: upload a scene, pick the task, click points, run, see and download the answer.

Layout: the scene (a true- or false-colour composite of any band count; clicks add points) and
the answer side by side; below them the task (a land-cover category, a free-text question, or a
referring expression),
the Run button, the answer text, the mask overlay and the downloads (mask GeoTIFF, overlay PNG,
answer JSON). Errors are shown in the page as the one-line message of the command line.
Endpoints (for ``gradio_client``): ``/preview`` (file, composite → picture) and ``/run``
(file, task, category, question or expression → overlay, answer, files).
"""

# No `from __future__ import annotations`: Gradio reads the `gr.SelectData` annotation of the
# click handler at run time to pass the click's coordinates.
from typing import Any

from rsvlm.app import actions


def _require_gradio():
    try:
        import gradio as gr
    except ImportError as err:  # the app is an extra
        raise actions.AppError('the browser app needs Gradio: pip install "rsvlm[app]"') from err
    return gr


def build_app(predictor: Any, title: str = "rsvlm") -> Any:
    """A ``gradio.Blocks`` page for ``predictor`` (:class:`rsvlm.inference.api.Predictor`)."""
    gr = _require_gradio()
    bands = list(predictor.bands)
    categories = list(getattr(predictor.datamodule, "categories", None) or ["water", "vegetation", "building"])
    takes_prompts = getattr(predictor.model, "prompt_encoder", None) is not None

    def on_upload(path, composite):
        try:
            return actions.preview(path, bands, composite), []
        except actions.AppError as err:
            raise gr.Error(str(err)) from err

    def on_click(path, composite, points, evt: gr.SelectData):
        points = [*points, [int(evt.index[0]), int(evt.index[1])]]
        picture = actions.preview(path, bands, composite)
        return actions.mark_points(picture, points), points

    def on_run(path, task, category, question, points=(), progress=gr.Progress(track_tqdm=True)):
        try:
            return actions.run(predictor, path, task, category, question, points or (), progress=True)
        except actions.AppError as err:
            raise gr.Error(str(err)) from err

    with gr.Blocks(title=title) as page:
        gr.Markdown(
            f"## {title}\nModel bands: {', '.join(bands)}. "
            + ("Click the scene to add point prompts." if takes_prompts else "This model takes no visual prompts.")
        )
        points = gr.State([])
        with gr.Row():
            with gr.Column():
                scene = gr.File(label="Scene (GeoTIFF, PNG, JPEG)", type="filepath", elem_id="scene-file")
                composite = gr.Radio(["auto", "true", "false"], value="auto", label="Composite")
                picture = gr.Image(label="Scene", interactive=False, format="png", height=420, elem_id="scene-picture")
            with gr.Column():
                overlay = gr.Image(label="Mask overlay", interactive=False, format="png", height=420, elem_id="overlay")
                answer = gr.Textbox(label="Answer", lines=6, elem_id="answer")
                downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
        with gr.Row():
            task = gr.Radio(list(actions.TASKS), value=actions.TASKS[0], label="Task")
            category = gr.Dropdown(categories, value=categories[0], label="Land-cover category")
            question = gr.Textbox(label="Question or referring expression")
        run_button = gr.Button("Run", variant="primary", elem_id="run")
        scene.upload(on_upload, [scene, composite], [picture, points], api_name="preview")
        composite.change(on_upload, [scene, composite], [picture, points], api_name=False)
        picture.select(on_click, [scene, composite, points], [picture, points], api_name=False)
        run_button.click(
            on_run, [scene, task, category, question, points], [overlay, answer, downloads], api_name="run"
        )
    return page


def launch(predictor: Any, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> Any:
    """Build the page and serve it (localhost by default); returns what ``Blocks.launch`` returns."""
    page = build_app(predictor)
    return page.launch(server_name=host, server_port=port, show_error=True, **kwargs)
