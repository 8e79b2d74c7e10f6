import numpy as np
import pytest
import soundfile as sf
from media import write_tone

from spectral.io.audio import TARGET_SAMPLES, from_pcm16, load_audio, to_pcm16


@pytest.mark.parametrize("rate,channels,subtype", [
    (44_100, 1, "PCM_16"), (48_000, 2, "PCM_24"), (8_000, 1, "PCM_U8"), (22_050, 2, "FLOAT"), (96_000, 1, "PCM_32"),
])
def test_any_wav_becomes_mono_44k1_5s(tmp_path, rate, channels, subtype):
    write_tone(tmp_path / "a.wav", seconds=1.0, rate=rate, channels=channels, subtype=subtype, frequency=440)
    waveform, info = load_audio(tmp_path / "a.wav")
    assert waveform.shape == (TARGET_SAMPLES,) and waveform.dtype == np.float32
    assert info.sample_rate == rate and info.channels == channels
    assert np.all(waveform[44_100 + 200:] == 0)  # 1 s of signal, then zero padding
    spectrum = np.abs(np.fft.rfft(waveform[:44_100]))
    assert abs(np.argmax(spectrum) * 44_100 / 44_100 - 440) <= 2  # the tone survives resampling
    assert 0.4 < np.abs(waveform[:44_100]).max() < 0.6


def test_long_audio_is_trimmed(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=7.0)
    waveform, info = load_audio(tmp_path / "a.wav")
    assert waveform.shape == (TARGET_SAMPLES,) and info.duration_s == pytest.approx(7.0)


def test_pcm16_storage_is_exact_for_16_bit_sources(tmp_path):
    write_tone(tmp_path / "a.wav", seconds=5.0)
    raw, _ = sf.read(tmp_path / "a.wav", dtype="int16")
    waveform, _ = load_audio(tmp_path / "a.wav")
    np.testing.assert_array_equal(to_pcm16(waveform), raw)
    np.testing.assert_array_equal(from_pcm16(to_pcm16(waveform)), waveform)


def test_empty_and_corrupt_wav_raise(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1)), 44_100)
    with pytest.raises(ValueError, match="no samples"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00junk")
    with pytest.raises(sf.LibsndfileError):
        load_audio(tmp_path / "bad.wav")


def test_saturated_int16_channels_are_counted_before_downmix(tmp_path):
    """A channel pinned at int16 full scale is a clipped recording, even where averaging with the other
    channel hides it; NaN-free integer audio needs no repair."""
    stereo = np.zeros((44_100, 2), dtype=np.int16)
    stereo[:30, 0] = 32767
    stereo[30:40, 1] = -32768
    stereo[40:100] = 32000  # loud, not clipped
    sf.write(tmp_path / "a.wav", stereo, 44_100, subtype="PCM_16")
    _, info = load_audio(str(tmp_path / "a.wav"))
    assert (info.clipped_samples, info.repaired_samples) == (40, 0)
