"""ElectrodeAnnotation core (pure Python; no slicer/qt/ctk imports)."""
