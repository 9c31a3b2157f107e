"""``meshenc source``: a live MPEG-TS source that sends one stream to many encoders.

Each destination gets its own simulated path (delay, jitter, a slow swing, loss), so encoders
of a mesh see the same pictures at different, wandering moments, as they do behind real
networks. Modules: :mod:`.path` (URLs and the delay line model), :mod:`.pacing` (datagrams and
their send times) and :mod:`.rtp` are pure; :mod:`.media` encodes and muxes with PyAV;
:mod:`.service` runs the threads and sockets; :mod:`.clip` writes test clips.
"""
