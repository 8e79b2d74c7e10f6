"""The event-folder contract: what a recorded event is, its label, and why it may be rejected.

Every stage meets raw recordings through this module, so the class list and the file
names live here once and a malformed event produces the same typed, readable error
wherever it is first touched.
"""

from __future__ import annotations

import configparser
import contextlib
import errno
import functools
import json
import signal
import stat
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLASS_NAMES: tuple[str, ...] = (
    "Ruído_Ambiente",
    "Interferência_Eletrônica",
    "Anomalia_Correlacionada",
    "Forma_Humanoide_Potencial",
)
"""The four classes; position = stable class index used in shards, models and metrics."""

VIDEO_FILE = "video.mp4"
AUDIO_FILE = "audio.wav"
SENSORS_FILE = "sensors.csv"
METADATA_FILE = "metadata.json"
REQUIRED_FILES: tuple[str, ...] = (METADATA_FILE, VIDEO_FILE, AUDIO_FILE, SENSORS_FILE)
EVENT_PREFIX = "event_"


def _ascii_fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


_FOLDED_TO_INDEX = {_ascii_fold(name): index for index, name in enumerate(CLASS_NAMES)}


def display_name(name: str) -> str:
    """A folder name as text any report can hold: bytes that are not UTF-8 (a Latin-1 name from an old zip)
    come back from the OS as surrogates, which no UTF-8 writer accepts; they are shown as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class EventError(Exception):
    """An event that cannot be used; the message names the event and the file at fault."""

    def __init__(self, event: str, file: str | None, problem: str) -> None:
        event = display_name(event)
        self.event, self.file, self.problem = event, file, problem
        where = f"{event}/{file}" if file else event
        super().__init__(f"{where}: {problem}")


class MissingFileError(EventError):
    """A required file is absent or empty."""


class MetadataError(EventError):
    """metadata.json is unreadable or not a JSON object."""


class LabelError(EventError):
    """The classification is missing or not one of CLASS_NAMES."""


class MediaError(EventError):
    """A media or sensor file exists but cannot be decoded."""


class StrictModeError(RuntimeError):
    """Raised by a stage in strict mode at the first rejected event."""


class MachineFailure(RuntimeError):
    """An event failed twice for a reason that is not a property of its files: the stage stops, recording nothing."""


class EventTimeout(TimeoutError):
    """An event ran past its time budget: the machine's problem (a hung read, a pathological decode), not recorded."""


@contextlib.contextmanager
def time_budget(seconds: float, what: str) -> Iterator[None]:
    """Raise EventTimeout in this (main) thread when the block runs longer than `seconds` (0: no budget).

    A SIGALRM timer: it interrupts Python code, and C code (a decoder) as soon as it returns a frame."""
    if not seconds:
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise EventTimeout(f"{what} took longer than its {seconds:g} s time budget")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def describe_error(err: BaseException) -> str:
    """An error as a reason a person reads: its type beside a message that alone may say little."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def attempt_twice(stage: str, name: str, work: Callable[[], T]) -> T:
    """`work()` for one event, tried once more when it fails for a reason that is not an EventError (I/O,
    memory, a bug: not a property of the event's files, see spectral.io.errors). A second such failure
    raises MachineFailure naming the event and the cause; an EventError passes through at once."""
    for attempt in (1, 2):
        try:
            return work()
        except EventError:
            raise
        except Exception as err:
            if attempt == 2:
                raise MachineFailure(f"{stage}: {display_name(name)} failed twice with {describe_error(err)}; that is "
                                     f"not a property of its files, so nothing was recorded: fix the cause and "
                                     f"re-run") from err
    raise AssertionError("unreachable")


DEFAULT_MAX_REJECTED_FRACTION = 0.5


class TooManyRejectionsError(RuntimeError):
    """More of the input was rejected than a stage accepts as bad data: a bug or a wrong folder."""


def check_losses(stage: str, rejected: int, kept_without: dict[str, int], inputs: int, max_fraction: float,
                 report: Path) -> None:
    """Fail the stage (its report already written) when the events rejected, or the events that lost one
    modality (rejected, or kept without it under `missing_modality: keep`), exceed `max_fraction` of the inputs.

    Per-event rejection keeps one bad file from killing a 10,000-event run; but when most
    events fail, the cause is a broken build or the wrong folder, and a "successful" stage
    that silently trained on the survivors (or on events without their video) would hide it.
    """
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"{stage}.max_rejected_fraction must be within [0, 1], got {max_fraction}")
    if inputs == 0:
        raise TooManyRejectionsError(f"{stage}: the events folder holds no event folders; report in {report}")
    losses = {"rejected": rejected, **{f"without their {modality} (rejected, or kept without it)": rejected + count
                                       for modality, count in kept_without.items()}}
    for what, count in losses.items():
        if count / inputs > max_fraction:
            raise TooManyRejectionsError(
                f"{stage}: {count} of {inputs} events {what} ({count / inputs:.0%}), more than "
                f"{stage}.max_rejected_fraction={max_fraction}; reasons in {report}")


def label_index(label: str) -> int:
    """Index of a class name; accents and case are folded so "Ruido_Ambiente" is accepted.

    Phones and spreadsheets routinely strip diacritics, and the folded names are still
    unambiguous, so refusing them would only lose real events.
    """
    try:
        return _FOLDED_TO_INDEX[_ascii_fold(label.strip())]
    except KeyError:
        raise ValueError(f"unknown class {label!r}; expected one of {', '.join(CLASS_NAMES)}") from None


@dataclass(frozen=True)
class Event:
    """A validated event folder. `label` is None when loaded for prediction (labels ignored)."""

    path: Path
    label: int | None
    metadata: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def video(self) -> Path:
        return self.path / VIDEO_FILE

    @property
    def audio(self) -> Path:
        return self.path / AUDIO_FILE

    @property
    def sensors(self) -> Path:
        return self.path / SENSORS_FILE


def read_metadata(folder: Path) -> dict:
    """metadata.json as a dict; UTF-8 with or without a byte-order mark."""
    path = folder / METADATA_FILE
    if not path.is_file():
        raise MissingFileError(folder.name, METADATA_FILE, "file is missing")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MetadataError(folder.name, METADATA_FILE, f"not valid UTF-8 JSON ({err})") from None
    if not isinstance(metadata, dict):
        raise MetadataError(folder.name, METADATA_FILE, "top level must be a JSON object")
    return metadata


def special_file(mode: int) -> str | None:
    """What a file that is not a regular file or a folder is ("a FIFO", "a device", "a socket"); None otherwise."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"


def check_file(folder: Path, file: str, links_inside: bool = False) -> Path:
    """folder/file, or MissingFileError when it is absent or empty (a phone that never started a recorder);
    MediaError for a FIFO, a device or a link to one, which is refused without being opened, and, with
    `links_inside`, for a link whose target is outside the events folder (see `check_link`)."""
    path = Path(folder) / file
    try:
        info = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise MissingFileError(Path(folder).name, file, "file is missing") from None
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise MediaError(Path(folder).name, file, "a symlink loop: refused") from None
    if stat.S_ISDIR(info.st_mode):
        raise MissingFileError(Path(folder).name, file, "file is missing (a folder has its name)")
    if (kind := special_file(info.st_mode)) is not None:
        raise MediaError(Path(folder).name, file, f"not a regular file ({kind}): refused without reading it")
    if info.st_size == 0:
        raise MissingFileError(Path(folder).name, file, "file is empty")
    if links_inside:
        check_link(path, Path(folder).parent, Path(folder).name, file)
    return path


LINK_POLICIES = ("refuse", "follow")
LINK_OUTSIDE = "outside the events folder and its DVC cache"


def check_link_policy(policy: str) -> str:
    if policy not in LINK_POLICIES:
        raise ValueError(f"links_outside_events must be one of {', '.join(LINK_POLICIES)}, got {policy!r}")
    return policy


@functools.cache
def link_targets_allowed(events_root: Path) -> tuple[Path, ...]:
    """Where a link inside the events folder may point: the folder itself, and the DVC cache of the project
    holding it (`dvc add` with `cache.type: symlink` turns every recording into a link there)."""
    root = Path(events_root).resolve()
    allowed = [root]
    for project in (root, *root.parents):
        dvc_dir = project / ".dvc"
        if dvc_dir.is_dir():
            cache = dvc_dir / "cache"
            for config in (dvc_dir / "config", dvc_dir / "config.local"):
                parser = configparser.ConfigParser()
                try:
                    parser.read(config, encoding="utf-8")
                except configparser.Error:
                    continue
                if parser.has_option("cache", "dir"):
                    cache = dvc_dir / parser.get("cache", "dir")
            allowed.append(cache.resolve())
            break
    return tuple(allowed)


def links_outside(path: Path, events_root: Path) -> bool:
    """Whether `path` resolves outside the events folder and its project's DVC cache (see check_link)."""
    target = Path(path).resolve()
    return not any(target.is_relative_to(allowed) for allowed in link_targets_allowed(Path(events_root)))


def check_link(path: Path, events_root: Path, event: str, file: str | None) -> None:
    """Refuse a path that resolves outside the events folder and its project's DVC cache: a symlink in a
    shared archive must not make a stage read (and publish) whatever it points to. The reason names no
    path: it is stored in outputs that must be the same bytes on every machine."""
    if links_outside(path, events_root):
        raise MediaError(event, file, f"a link {LINK_OUTSIDE}: refused (param links_outside_events: follow "
                                      f"allows it)")


MISSING_MODALITY_POLICIES = ("keep", "reject")


def check_missing_policy(policy: str) -> str:
    if policy not in MISSING_MODALITY_POLICIES:
        raise ValueError(f"missing_modality must be one of {', '.join(MISSING_MODALITY_POLICIES)}, got {policy!r}")
    return policy


def load_event(folder: Path, *, labelled: bool = True, files: tuple[str, ...] = REQUIRED_FILES[1:],
               links_inside: bool = False) -> Event:
    """Validate an event folder; raise an EventError subclass naming the first problem found.

    `labelled=False` (prediction, decode) ignores metadata.json entirely: it holds only the
    label, and an absent, unknown or malformed label says nothing about whether the recording
    can be decoded or classified. `files` are the recordings the caller reads: a stage checks
    only what its result depends on, or a file it never reads would change its outcome.
    `links_inside`: the folder and its files may not be links that resolve outside the events folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(folder.name, None, "event folder does not exist")
    if display_name(folder.name) != folder.name:
        raise EventError(folder.name, None, "folder name is not valid UTF-8 (undecodable bytes shown as \\xNN); "
                                            "rename the folder")
    if not folder.name.startswith(EVENT_PREFIX):
        raise EventError(folder.name, None, f"folder name must start with {EVENT_PREFIX!r}")
    if links_inside:
        check_link(folder, folder.parent, folder.name, None)
        if labelled and (folder / METADATA_FILE).exists():
            check_link(folder / METADATA_FILE, folder.parent, folder.name, METADATA_FILE)
    metadata = read_metadata(folder) if labelled else {}
    for file in files:
        check_file(folder, file, links_inside)
    if not labelled:
        return Event(folder, None, metadata)
    raw_label = metadata.get("classification")
    if raw_label is None:
        raise LabelError(folder.name, METADATA_FILE, "no 'classification' field (unlabeled event)")
    if not isinstance(raw_label, str):
        raise LabelError(folder.name, METADATA_FILE, f"'classification' must be a string, got {raw_label!r}")
    try:
        label = label_index(raw_label)
    except ValueError as err:
        raise LabelError(folder.name, METADATA_FILE, str(err)) from None
    return Event(folder, label, metadata)


def find_event_folders(root: Path) -> list[Path]:
    """Every visible sub-folder of root, sorted by name so every stage sees the same order.

    Folders that break the naming contract are returned too: stages reject them with a
    reason instead of skipping them silently.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"events directory {root} does not exist")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
