"""A discrete-event simulator that runs many ``SyncEngine`` instances on virtual time.

It injects what the real world does to encoders — clock offsets, drift, steps and read jitter;
ingest delays that differ per encoder and change slowly; network delay, jitter and loss; lying
neighbours — and records every picture's timecode on every encoder, so that strategies can be
compared on exactly the same world (same seed, same faults, same capture noise).
"""
