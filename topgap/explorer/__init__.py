"""What the app needs beyond the method: families, display geometry, overlays, the attack view, Hub loading, the
session's state machine, texts, figures and the workspace.

Only handlers.py (the event handlers and typed API) and blocks.py (gradio building blocks) import gradio; app.py
holds the page layout and its wiring.
"""
