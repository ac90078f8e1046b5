"""The pipeline's stages; each runs as ``python -m stages.<name>``."""

from pipeline.noise import silence_library_noise

# Here, because a stage module imports TRL (and so bitsandbytes, which warns at import) before anything of ours.
silence_library_noise()
