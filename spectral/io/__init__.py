"""Media input: seek-free, upright video frames and fixed-length mono audio from any file FFmpeg reads."""
