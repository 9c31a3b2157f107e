"""meshenc: live encoders that hold one timeline by predicting drift and correcting it early."""

__version__ = "0.1.0"
