"""A local browser app for a trained model (``rsvlm app MODEL``; needs ``pip install "rsvlm[app]"``).

:mod:`rsvlm.app.actions` holds what the page does as plain functions (preview a scene, mark a
point, run the model, write the downloads), :mod:`rsvlm.app.ui` lays them out with Gradio.
"""
