"""Visual prompts (points, boxes, free-form strokes and masks) → LLM tokens and SAM prompts.

The prompts of a batch travel as one :class:`rsvlm.contracts.VisualPromptBatch`;
:mod:`rsvlm.prompts.geometry` draws them (canvases, overlays) and resamples strokes, and each
other module here is one visual-prompt encoder.
"""
