import json

import pytest

from spectral.events import (
    CLASS_NAMES,
    EventError,
    LabelError,
    MetadataError,
    MissingFileError,
    find_event_folders,
    label_index,
    load_event,
)


def make_event(root, name="event_001", metadata=None, files=("video.mp4", "audio.wav", "sensors.csv")):
    folder = root / name
    folder.mkdir()
    if metadata is not None:
        (folder / "metadata.json").write_text(metadata if isinstance(metadata, str) else json.dumps(metadata),
                                              encoding="utf-8")
    for file in files:
        (folder / file).write_bytes(b"x")
    return folder


def test_class_names_are_the_specs_four_in_stable_order():
    assert CLASS_NAMES == ("Ruído_Ambiente", "Interferência_Eletrônica", "Anomalia_Correlacionada",
                           "Forma_Humanoide_Potencial")


def test_valid_event_with_bom_and_exact_label(tmp_path):
    folder = make_event(tmp_path, metadata='\ufeff{"classification": "Anomalia_Correlacionada"}')
    event = load_event(folder)
    assert event.label == 2 and event.name == "event_001"


@pytest.mark.parametrize("label,index", [("Ruido_Ambiente", 0), ("interferencia_eletronica", 1),
                                         (" Forma_Humanoide_Potencial ", 3)])
def test_ascii_folded_labels_are_accepted(label, index):
    assert label_index(label) == index


def test_missing_file_names_event_and_file(tmp_path):
    folder = make_event(tmp_path, metadata={"classification": "Ruído_Ambiente"}, files=("video.mp4", "sensors.csv"))
    with pytest.raises(MissingFileError, match="event_001/audio.wav: file is missing"):
        load_event(folder)


def test_empty_file_is_rejected(tmp_path):
    folder = make_event(tmp_path, metadata={"classification": "Ruído_Ambiente"})
    (folder / "video.mp4").write_bytes(b"")
    with pytest.raises(MissingFileError, match="video.mp4: file is empty"):
        load_event(folder)


def test_missing_metadata(tmp_path):
    with pytest.raises(MissingFileError, match="metadata.json: file is missing"):
        load_event(make_event(tmp_path))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", b"\xff\xfe\x00bad"])
def test_unreadable_metadata(tmp_path, text):
    folder = make_event(tmp_path, metadata="{}")
    (folder / "metadata.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(MetadataError, match="event_001/metadata.json"):
        load_event(folder)


def test_unknown_label_is_an_error_not_class_zero(tmp_path):
    folder = make_event(tmp_path, metadata={"classification": "Fantasma"})
    with pytest.raises(LabelError, match="unknown class 'Fantasma'"):
        load_event(folder)


def test_missing_label_is_an_error_for_training_and_unlabeled_for_inference(tmp_path):
    folder = make_event(tmp_path, metadata={"event_id": "x"})
    with pytest.raises(LabelError, match="unlabeled"):
        load_event(folder)
    assert load_event(folder, labelled=False).label is None


@pytest.mark.parametrize("label", ["Fantasma", 2, None, ["x"]])
def test_prediction_ignores_any_label(tmp_path, label):
    folder = make_event(tmp_path, metadata={"classification": label})
    assert load_event(folder, labelled=False).label is None


def test_non_string_label(tmp_path):
    with pytest.raises(LabelError, match="must be a string"):
        load_event(make_event(tmp_path, metadata={"classification": 2}))


def test_folder_outside_the_naming_contract_is_listed_then_rejected(tmp_path):
    make_event(tmp_path, name="event_b", metadata={"classification": "Ruído_Ambiente"})
    odd = make_event(tmp_path, name="recording-7", metadata={"classification": "Ruído_Ambiente"})
    (tmp_path / ".hidden").mkdir()
    assert [p.name for p in find_event_folders(tmp_path)] == ["event_b", "recording-7"]
    with pytest.raises(EventError, match="must start with 'event_'"):
        load_event(odd)
