"""Applying trained models to new media: sliding-window inference and the files it writes."""
