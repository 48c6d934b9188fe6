"""The Gradio page: upload a scene, pick the task, add visual prompts, run, see and download the answer.

Layout: the scene (a true- or false-colour composite of any band count) and the answer side by
side. On the scene's Click tab a click adds a point (or, with the box tool, two clicks give a box's
opposite corners) and a drag draws a box; the Paint tab paints a free-form region with a brush. Below: the task (a
land-cover category, a free-text question, or a referring expression), the Run button, the answer
text, the mask overlay and the downloads (mask GeoTIFF, overlay PNG, answer JSON). Errors are
shown in the page as the one-line message of the command line. Endpoints (for
``gradio_client``): ``/preview`` (file, composite → picture, prompts reset, paint canvas) and
``/run`` (file, task, category, question or expression, points, boxes, painting → overlay,
answer, files).
"""

# No `from __future__ import annotations`: Gradio reads the `gr.SelectData` annotation of the
# click handler at run time to pass the click's coordinates.
from typing import Any

from rsvlm.app import actions

# A drag on the scene picture: Gradio's image reports clicks only, so the page listens for the
# mouse itself, keeps the dragged box (in the picture's own pixels) and clicks #drag-add, which
# copies it into the #drag-box field and adds it; the click that ends a drag is swallowed so that
# it adds no point. A box typed into the field is added by the same button.
DRAG_JS = """
() => {
  let start = null, dragged = false;
  const pixel = (e, img) => {
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const left = r.left + (r.width - img.naturalWidth * scale) / 2, top = r.top + (r.height - img.naturalHeight * scale) / 2;
    const clamp = (v, n) => Math.max(0, Math.min(n - 1, Math.floor(v)));
    return [clamp((e.clientX - left) / scale, img.naturalWidth), clamp((e.clientY - top) / scale, img.naturalHeight)];
  };
  document.addEventListener("mousedown", (e) => {
    const img = e.target.closest && e.target.closest("#scene-picture img");
    if (img) { start = pixel(e, img); dragged = false; e.preventDefault(); }
  }, true);
  document.addEventListener("mouseup", (e) => {
    if (!start) return;
    const img = document.querySelector("#scene-picture img"), end = pixel(e, img);
    if (Math.abs(end[0] - start[0]) + Math.abs(end[1] - start[1]) > 3) {
      dragged = true;
      window.rsvlmDraggedBox = [start[0], start[1], end[0], end[1]].join(",");
      document.querySelector("#drag-add").click();
    }
    start = null;
  }, true);
  document.addEventListener("click", (e) => {
    if (dragged && e.target.closest && e.target.closest("#scene-picture")) { e.stopPropagation(); e.preventDefault(); dragged = false; }
  }, true);
}
"""


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

    def fail(err: actions.AppError):
        return gr.Error(str(err))

    def on_upload(path, composite):
        try:
            picture = actions.preview(path, bands, composite)
        except actions.AppError as err:
            raise fail(err) from err
        return picture, [], [], None, picture

    def on_click(path, composite, tool, points, boxes, corner, evt: gr.SelectData):
        try:
            points, boxes, corner = actions.add_click(tool, int(evt.index[0]), int(evt.index[1]), points, boxes, corner)
            picture = actions.preview(path, bands, composite)
        except actions.AppError as err:
            raise fail(err) from err
        return actions.mark_prompts(picture, points, boxes, corner), points, boxes, corner

    def on_drag(path, composite, value, points, boxes):
        if not value:
            return gr.skip(), points, boxes, None
        try:
            points, boxes = actions.add_drag(value, points, boxes)
            picture = actions.preview(path, bands, composite)
        except actions.AppError as err:
            raise fail(err) from err
        return actions.mark_prompts(picture, points, boxes), points, boxes, None

    def on_clear(path, composite):
        picture = actions.preview(path, bands, composite)
        return picture, [], [], None, picture

    def on_run(
        path, task, category, question, points=(), boxes=(), painting=None, progress=gr.Progress(track_tqdm=True)
    ):
        try:
            background = (painting or {}).get("background")
            painted = None if background is None else actions.painted_mask(painting, background.shape[:2])
            return actions.run(
                predictor,
                path,
                task,
                category,
                question,
                points or (),
                progress=True,
                boxes=boxes or (),
                painted=painted,
            )
        except actions.AppError as err:
            raise fail(err) from err

    with gr.Blocks(title=title) as page:
        gr.Markdown(
            f"## {title}\nModel bands: {', '.join(bands)}. "
            + (
                "Click the scene to add points (or, with the box tool, two opposite corners of a box), drag "
                "on it to draw a box; paint a free-form region in the Paint tab."
                if predictor.takes_visual_prompts
                else "This model takes no visual prompts."
            )
        )
        points, boxes, corner = gr.State([]), gr.State([]), gr.State(None)
        with gr.Row():
            with gr.Column():
                scene = gr.File(label="Scene (GeoTIFF, PNG, JPEG)", type="filepath", elem_id="scene-file")
                with gr.Row():
                    composite = gr.Radio(["auto", "true", "false"], value="auto", label="Composite")
                    tool = gr.Radio(list(actions.PROMPT_TOOLS), value="point", label="A click adds", elem_id="tool")
                    clear = gr.Button("Clear prompts", elem_id="clear")
                with gr.Tab("Click"):
                    picture = gr.Image(
                        label="Scene", interactive=False, format="png", height=420, elem_id="scene-picture"
                    )
                    with gr.Row():
                        dragged = gr.Textbox(label="Dragged box (x0, y0, x1, y1)", max_lines=1, elem_id="drag-box")
                        add_dragged = gr.Button("Add the dragged box", size="sm", elem_id="drag-add")
                with gr.Tab("Paint", elem_id="paint-tab"):
                    painting = gr.ImageEditor(
                        label="Paint a free-form region",
                        type="numpy",
                        sources=(),
                        brush=gr.Brush(colors=["#ff3030"], color_mode="fixed"),
                        format="png",
                        height=420,
                        elem_id="scene-painting",
                    )
            with gr.Column():
                overlay = gr.Image(label="Mask overlay", interactive=False, format="png", height=420, elem_id="overlay")
                answer = gr.Textbox(label="Answer", lines=6, elem_id="answer")
                downloads = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
        with gr.Row():
            task = gr.Radio(list(actions.TASKS), value=actions.TASKS[0], label="Task")
            category = gr.Dropdown(categories, value=categories[0], label="Land-cover category")
            question = gr.Textbox(label="Question or referring expression")
        run_button = gr.Button("Run", variant="primary", elem_id="run")
        reset = [picture, points, boxes, corner, painting]
        scene.upload(on_upload, [scene, composite], reset, api_name="preview")
        composite.change(on_upload, [scene, composite], reset, api_name=False)
        clear.click(on_clear, [scene, composite], reset, api_name=False)
        picture.select(
            on_click, [scene, composite, tool, points, boxes, corner], [picture, points, boxes, corner], api_name=False
        )
        # the page's script holds the box: a js-only step copies it into the field, then Python adds it
        add_dragged.click(None, [dragged], [dragged], js="(v) => window.rsvlmDraggedBox || v", api_name=False).then(
            on_drag, [scene, composite, dragged, points, boxes], [picture, points, boxes, corner], api_name=False
        )
        page.load(None, None, None, js=DRAG_JS)
        run_button.click(
            on_run,
            [scene, task, category, question, points, boxes, painting],
            [overlay, answer, downloads],
            api_name="run",
        )
    return page


def launch(predictor: Any, host: str = "127.0.0.1", port: int | None = None, **kwargs: Any) -> Any:
    """Build the page and serve it (localhost by default); returns what ``Blocks.launch`` returns."""
    page = build_app(predictor)
    return page.launch(server_name=host, server_port=port, show_error=True, **kwargs)
