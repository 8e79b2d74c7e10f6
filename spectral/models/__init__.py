"""The fusion model: frozen frame encoder, audio and sensor branches, and the exported artefact."""
