"""What the app needs beyond the method: families, display geometry, overlays, the attack view, Hub loading.

Nothing here imports gradio; app.py holds the UI only.
"""
