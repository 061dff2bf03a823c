"""Emotion inference: the model behind a batch interface, and the one worker thread that owns it.

Only this package imports torch or funasr, and only inside the functions that need them.
"""
