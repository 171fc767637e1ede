"""The provider-neutral simulated voice model behind every simulator front-end.

A front-end (``openai.py``, ``gemini.py``) speaks one provider's wire protocol; everything that
decides *what the model does* lives here so both protocols behave alike:

- :class:`SimScript` / :class:`ToolCallScript`: the scripted behaviour (reply text, pacing, the
  tool call, failure injection). One script is shared by all connections of a simulator and is
  read live, so a test may change it between turns.
- :class:`EnergyVAD`: energy voice-activity detection over decoded PCM16 input, in 10 ms
  windows, reporting speech start/stop positions in milliseconds of input audio.
- :func:`synthesize_speech` / :func:`reply_plan`: deterministic speech-like reply audio (voiced
  harmonics with formants, an intonation contour and a syllable envelope, plus short consonant
  noise) cut into chunks, with the reply text split into transcript deltas paced with the audio.
  Both are cached: 200 sessions saying the same reply cost one synthesis.
- :class:`Conversation`: the conversation memory (user / assistant / tool items) so tests can
  check a replayed conversation or a resumed session.
- :class:`SimulatedModel`: one session's "brain": turn counting and the decision of each
  response (speak, call a tool, or speak the tool's result).

Extension points for a front-end: create one :class:`SimulatedModel` per session (the base server
does: ``conn.model``); feed decoded input to an :class:`EnergyVAD` built with
:meth:`SimulatedModel.new_vad`; record items in ``model.conversation``; call
:meth:`SimulatedModel.commit_user_turn` for each detected user turn and
:meth:`SimulatedModel.decide` when a response starts; stream :func:`reply_plan` chunks (PCM16
24 kHz, or :func:`encoded_chunks` for base64 in any G.711/PCM encoding); report
:meth:`SimulatedModel.usage` in the provider's shape.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from protocol.audio import encode_from_pcm16
from protocol.errors import ConfigError

__all__ = [
    "OUTPUT_SAMPLE_RATE",
    "Conversation",
    "ConversationItem",
    "Decision",
    "EnergyVAD",
    "ReplyChunk",
    "ReplyPlan",
    "SimScript",
    "SimulatedModel",
    "SpeakDecision",
    "ToolCallDecision",
    "ToolCallScript",
    "UsageCounts",
    "VadEvent",
    "encoded_chunks",
    "reply_audio_ms",
    "reply_plan",
    "split_transcript",
    "synthesize_speech",
    "tool_output_text",
]

#: Sample rate of synthesized reply audio (OpenAI and Gemini both speak PCM16 at 24 kHz).
OUTPUT_SAMPLE_RATE = 24000

#: Milliseconds of synthesized speech per character of reply text (about 15 characters/s).
MS_PER_CHAR = 65
_MIN_REPLY_MS = 300
_MAX_REPLY_MS = 30_000


@dataclass
class ToolCallScript:
    """When and how the simulated model calls a tool.

    ``name=None`` calls the session's first declared tool; a name that the session did not
    declare is never called (a real model cannot call an undeclared function). ``on_turn`` is the
    1-based user turn that triggers the call (``0``: every turn). After the tool result arrives
    (plus ``response.create`` on OpenAI) the model speaks a reply containing the result text.

    ``say_after`` (OpenAI front-end): speech the model adds in the same response after the call's
    arguments are done, as real models do ("let me check that"). The response then outlives the
    call, so a barge-in during that speech cancels a response whose call is still unanswered.
    """

    name: str | None = None
    arguments: dict[str, Any] = field(default_factory=lambda: {"city": "Paris"})
    on_turn: int = 1
    say_after: str | None = None

    def __post_init__(self) -> None:
        if self.on_turn < 0:
            raise ConfigError(f"ToolCallScript.on_turn {self.on_turn!r} is invalid; expected >= 0")


@dataclass
class SimScript:
    """The scripted behaviour of a simulator (``docs/simulator.md``).

    ``speed`` paces reply audio: 1.0 is real time, 20.0 twenty times faster, 0 sends the whole
    reply at once. ``vad_threshold_rms`` is the RMS (PCM16 units) above which a 10 ms window
    counts as speech when the session's VAD threshold is the provider default (OpenAI 0.5; a
    session threshold scales it proportionally). ``silence_ms`` is the silence that ends a turn
    unless the session sets its own. ``errors_after_turn`` maps a 1-based user turn to an error
    code sent (recoverable) right after that turn's first response ends. ``chunk_ms`` is the
    duration of each reply audio delta (an addition to the pinned API, default 100 ms).
    """

    reply_text: str = "Sure, I can help with that."
    user_transcript: str = "caller speech"
    reply_audio_ms: int | None = None
    speed: float = 1.0
    tool_call: ToolCallScript | None = field(default_factory=ToolCallScript)
    vad_threshold_rms: float = 500.0
    silence_ms: int = 300
    errors_after_turn: dict[int, str] = field(default_factory=dict)
    go_away_after_s: float | None = None
    go_away_time_left_s: float = 1.0
    max_session_s: float | None = None
    api_key: str | None = None
    chunk_ms: int = 100

    def __post_init__(self) -> None:
        if self.speed < 0:
            raise ConfigError(f"SimScript.speed {self.speed!r} is invalid; expected >= 0")
        if self.chunk_ms <= 0:
            raise ConfigError(f"SimScript.chunk_ms {self.chunk_ms!r} is invalid; expected > 0")
        if self.silence_ms < 0:
            raise ConfigError(f"SimScript.silence_ms {self.silence_ms!r} is invalid; expected >= 0")
        if self.reply_audio_ms is not None and self.reply_audio_ms <= 0:
            raise ConfigError(
                f"SimScript.reply_audio_ms {self.reply_audio_ms!r} is invalid; expected a "
                "positive number of milliseconds or None"
            )

    def __repr__(self) -> str:
        # the API key never appears in logs or test output
        fields = ", ".join(
            f"{name}={'***' if name == 'api_key' and value else value!r}"
            for name, value in self.__dict__.items()
        )
        return f"SimScript({fields})"


# --------------------------------------------------------------------------------------------
# Voice activity detection


_EMPTY = np.zeros(0, dtype=np.int16)


@dataclass(frozen=True)
class VadEvent:
    """Speech started or stopped at ``audio_ms`` milliseconds of input audio."""

    kind: Literal["start", "stop"]
    audio_ms: int


class EnergyVAD:
    """Energy VAD over PCM16 input in 10 ms windows.

    A window whose RMS reaches ``threshold_rms`` is speech. ``start`` is reported at the start of
    the first speech window; ``stop`` once ``silence_ms`` of non-speech followed the last speech
    window, at the end of that silence (like OpenAI's ``audio_end_ms``, which includes the
    silence). Positions count all audio fed since construction.
    """

    def __init__(self, sample_rate: int, threshold_rms: float, silence_ms: int) -> None:
        if sample_rate <= 0 or sample_rate % 100:
            raise ConfigError(
                f"VAD sample_rate {sample_rate!r} is invalid; expected a positive multiple of 100"
            )
        self.sample_rate = sample_rate
        self.threshold_rms = float(threshold_rms)
        self.silence_ms = int(silence_ms)
        self._window = sample_rate // 100
        self._energy_threshold = self.threshold_rms**2 * self._window
        # the window energies are float32; numpy compared them with the threshold rounded to
        # float32, and so does feed() on plain floats (the same decision, without numpy calls)
        self._energy_threshold32 = float(np.float32(self._energy_threshold))
        self._pending = _EMPTY
        self._windows = 0  # 10 ms windows consumed
        self.in_speech = False
        self._last_voice_end = 0  # window index just after the last speech window

    @property
    def position_ms(self) -> int:
        """Milliseconds of audio consumed into whole windows so far."""
        return self._windows * 10

    def feed(self, samples: np.ndarray) -> list[VadEvent]:
        """Consume int16 samples; return the start/stop events they caused, in order."""
        if self._pending.size:
            samples = np.concatenate((self._pending, samples))
        whole = samples.size // self._window
        rest = samples.size - whole * self._window
        self._pending = samples[samples.size - rest :].copy() if rest else _EMPTY
        if not whole:
            return []
        # sum of squares per window against threshold^2 * window: no sqrt, no mean (this runs
        # for every input frame of every session, so it avoids numpy's slower reductions, and
        # compares the few energies as plain floats instead of through more numpy calls)
        frames = samples[: whole * self._window].reshape(whole, self._window).astype(np.float32)
        energies: list[float] = np.einsum("ij,ij->i", frames, frames).tolist()
        threshold = self._energy_threshold32
        base = self._windows
        self._windows += whole
        if not self.in_speech and max(energies) < threshold:
            return []
        events: list[VadEvent] = []
        silence_windows = max(1, math.ceil(self.silence_ms / 10))
        for offset, energy in enumerate(energies):
            index = base + offset
            if energy >= threshold:
                if not self.in_speech:
                    self.in_speech = True
                    events.append(VadEvent("start", index * 10))
                self._last_voice_end = index + 1
            elif self.in_speech and index + 1 - self._last_voice_end >= silence_windows:
                self.in_speech = False
                events.append(VadEvent("stop", (index + 1) * 10))
        return events

    def reset(self) -> None:
        """Forget an ongoing utterance (buffer cleared or committed by the client)."""
        self.in_speech = False
        self._last_voice_end = self._windows


# --------------------------------------------------------------------------------------------
# Reply synthesis

# Formant pairs (F1, F2) of a few vowels; syllables cycle through them.
_VOWELS: tuple[tuple[float, float], ...] = (
    (730.0, 1090.0),
    (270.0, 2290.0),
    (530.0, 1840.0),
    (300.0, 870.0),
    (570.0, 840.0),
    (660.0, 1720.0),
)


def reply_audio_ms(text: str, override: int | None = None) -> int:
    """Duration of the reply audio for ``text``: ``override`` or ~65 ms per character."""
    if override is not None:
        return int(override)
    return int(min(_MAX_REPLY_MS, max(_MIN_REPLY_MS, MS_PER_CHAR * len(text.strip()))))


def _seed(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


@functools.lru_cache(maxsize=64)
def synthesize_speech(
    duration_ms: int, seed: int = 0, sample_rate: int = OUTPUT_SAMPLE_RATE
) -> bytes:
    """Deterministic speech-like PCM16 mono audio of ``duration_ms`` at ``sample_rate``.

    Voiced harmonics of a gliding fundamental (declining phrase intonation with per-syllable
    accents) shaped by vowel formants, under a syllable envelope of about 4.5 syllables/s with
    short gaps, plus brief noise bursts for consonants. Not a pure tone: its spectrum has many
    harmonics and its energy rises and falls per syllable. Same arguments, same bytes.
    """
    n = int(sample_rate * duration_ms / 1000)
    if n <= 0:
        return b""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) / sample_rate
    total_s = n / sample_rate

    # syllable boundaries: ~220 ms each, jittered
    bounds = [0]
    while bounds[-1] < n:
        bounds.append(bounds[-1] + int(sample_rate * rng.uniform(0.17, 0.27)))
    bounds[-1] = n
    syllables = len(bounds) - 1

    # fundamental: declination from ~150 Hz to ~110 Hz, accents per syllable, slow vibrato
    f0 = 150.0 - 40.0 * (t / max(total_s, 1e-6))
    accents = rng.uniform(-12.0, 22.0, size=syllables)
    envelope = np.zeros(n)
    vowel_index = np.zeros(n, dtype=np.int64)
    noise_gate = np.zeros(n)
    for i in range(syllables):
        a, b = bounds[i], bounds[i + 1]
        length = b - a
        f0[a:b] += accents[i] * np.sin(np.linspace(0.0, np.pi, length))
        voiced = int(length * rng.uniform(0.65, 0.85))
        onset = min(voiced // 2, int(0.012 * sample_rate))
        env = np.zeros(length)
        # raised-cosine syllable envelope over the voiced part, silence in the gap
        env[:voiced] = np.sin(np.linspace(0.0, np.pi, voiced)) ** 0.8
        envelope[a:b] = env * rng.uniform(0.6, 1.0)
        vowel_index[a:b] = rng.integers(0, len(_VOWELS))
        if rng.random() < 0.6 and onset:
            noise_gate[a : a + onset] = np.linspace(1.0, 0.0, onset)
    f0 += 3.0 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate

    # harmonics weighted by the formant resonances of the current vowel
    signal = np.zeros(n)
    f1 = np.array([v[0] for v in _VOWELS])[vowel_index]
    f2 = np.array([v[1] for v in _VOWELS])[vowel_index]
    for k in range(1, 25):
        freq = k * f0
        if float(freq.min()) >= sample_rate / 2:
            break
        gain = 1.0 / k + 1.6 / (1.0 + ((freq - f1) / 90.0) ** 2)
        gain += 0.9 / (1.0 + ((freq - f2) / 120.0) ** 2)
        signal += np.where(freq < sample_rate / 2, gain, 0.0) * np.sin(k * phase)
    signal *= envelope
    noise = rng.standard_normal(n)
    noise = np.diff(noise, prepend=0.0)  # high-pass: fricative-like hiss
    signal += 0.8 * noise * noise_gate

    peak = float(np.max(np.abs(signal))) or 1.0
    pcm = np.clip(signal / peak * 0.55 * 32767.0, -32768, 32767).astype("<i2")
    return pcm.tobytes()


def split_transcript(text: str) -> list[str]:
    """Split ``text`` into transcript deltas (a word with its following space); ''.join = text."""
    parts: list[str] = []
    current = ""
    for char in text:
        current += char
        if char == " ":
            parts.append(current)
            current = ""
    if current:
        parts.append(current)
    if len(parts) > 1 and parts[0].isspace():
        parts[1] = parts[0] + parts[1]
        parts.pop(0)
    return parts


@dataclass(frozen=True)
class ReplyChunk:
    """One paced step of a reply: ``pcm`` (PCM16 24 kHz) and the transcript deltas due by its end.

    ``start_ms`` / ``end_ms`` are positions in the reply audio.
    """

    pcm: bytes
    start_ms: int
    end_ms: int
    transcript: tuple[str, ...]


@dataclass(frozen=True)
class ReplyPlan:
    """A whole reply: its text, audio duration and paced chunks (immutable, shared, cached)."""

    text: str
    audio_ms: int
    chunk_ms: int
    chunks: tuple[ReplyChunk, ...]

    @property
    def pcm(self) -> bytes:
        return b"".join(chunk.pcm for chunk in self.chunks)


@functools.lru_cache(maxsize=256)
def reply_plan(text: str, audio_ms: int, chunk_ms: int = 100) -> ReplyPlan:
    """The cached plan for saying ``text`` in ``audio_ms`` of audio, in ``chunk_ms`` chunks.

    Transcript deltas are placed proportionally to their character offset in the text, so the
    transcript stays aligned with the audio (each delta is due in the chunk where its first
    character is spoken). Every delta is due by the last chunk.
    """
    pcm = synthesize_speech(audio_ms, _seed(text))
    bytes_per_ms = OUTPUT_SAMPLE_RATE * 2 // 1000
    deltas = split_transcript(text)
    starts: list[int] = []
    offset = 0
    for delta in deltas:
        starts.append(int(audio_ms * offset / max(len(text), 1)))
        offset += len(delta)
    chunks: list[ReplyChunk] = []
    next_delta = 0
    position = 0
    while position < audio_ms:
        end = min(audio_ms, position + chunk_ms)
        due: list[str] = []
        last = end >= audio_ms
        while next_delta < len(deltas) and (last or starts[next_delta] < end):
            due.append(deltas[next_delta])
            next_delta += 1
        chunks.append(
            ReplyChunk(
                pcm=pcm[position * bytes_per_ms : end * bytes_per_ms],
                start_ms=position,
                end_ms=end,
                transcript=tuple(due),
            )
        )
        position = end
    return ReplyPlan(text=text, audio_ms=audio_ms, chunk_ms=chunk_ms, chunks=tuple(chunks))


@functools.lru_cache(maxsize=256)
def encoded_chunks(
    plan: ReplyPlan, encoding: str = "pcm16", sample_rate: int = 24000
) -> tuple[str, ...]:
    """Base64 of each chunk of ``plan`` in ``encoding`` at ``sample_rate`` (cached per plan).

    ``sample_rate`` must divide 24000 evenly (24000, 8000 for G.711); lower rates are decimated
    after a short moving-average low-pass, good enough for simulated speech and cheap.
    """
    if OUTPUT_SAMPLE_RATE % sample_rate:
        raise ConfigError(
            f"simulated output sample_rate {sample_rate!r} is unsupported; expected a divisor "
            "of 24000 such as 24000 or 8000"
        )
    factor = OUTPUT_SAMPLE_RATE // sample_rate
    out: list[str] = []
    for chunk in plan.chunks:
        samples = np.frombuffer(chunk.pcm, dtype="<i2")
        if factor > 1:
            usable = samples[: samples.size - samples.size % factor].astype(np.int32)
            samples = usable.reshape(-1, factor).mean(axis=1).astype(np.int16)
        out.append(base64.b64encode(encode_from_pcm16(samples, encoding)).decode("ascii"))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Conversation memory


@dataclass
class ConversationItem:
    """One conversation item, provider-neutral.

    ``kind`` is ``message`` (with ``role`` user/assistant/system and ``text``: the typed text or
    the transcript of audio), ``function_call`` (``name``, ``call_id``, ``arguments`` as a JSON
    string) or ``function_call_output`` (``call_id``, ``output``). ``audio`` says the message
    content is audio; for assistant audio ``audio_ms`` is how much was generated and
    ``truncated_ms`` where the client truncated it.
    """

    id: str
    kind: Literal["message", "function_call", "function_call_output"]
    role: Literal["user", "assistant", "system"] | None = None
    text: str = ""
    audio: bool = False
    audio_ms: float = 0.0
    truncated_ms: int | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    status: Literal["completed", "incomplete", "in_progress"] = "completed"


class Conversation:
    """The ordered items of one session's conversation."""

    def __init__(self) -> None:
        self.items: list[ConversationItem] = []

    def __len__(self) -> int:
        return len(self.items)

    def get(self, item_id: str) -> ConversationItem | None:
        for item in self.items:
            if item.id == item_id:
                return item
        return None

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: ConversationItem, previous_item_id: str | None = None) -> str | None:
        """Insert ``item`` after ``previous_item_id`` (``"root"``: first; None: last).

        Returns the id of the item it now follows (None when first). Raises ``KeyError`` when
        ``previous_item_id`` names no item.
        """
        if previous_item_id is None:
            before = self.last_id()
            self.items.append(item)
            return before
        if previous_item_id == "root":
            self.items.insert(0, item)
            return None
        for index, existing in enumerate(self.items):
            if existing.id == previous_item_id:
                self.items.insert(index + 1, item)
                return previous_item_id
        raise KeyError(previous_item_id)

    def delete(self, item_id: str) -> bool:
        for index, existing in enumerate(self.items):
            if existing.id == item_id:
                del self.items[index]
                return True
        return False

    def user_turns(self) -> int:
        """Number of user messages: the 1-based index of the latest user turn."""
        return sum(1 for item in self.items if item.kind == "message" and item.role == "user")

    def texts(self, role: str | None = None) -> list[str]:
        """Texts of the messages (optionally of one role), in conversation order."""
        return [
            item.text
            for item in self.items
            if item.kind == "message" and (role is None or item.role == role)
        ]

    def pending_tool_outputs(self) -> list[ConversationItem]:
        """Tool outputs after the last assistant message or user message, in order.

        Non-empty means the next response should speak the tool result.
        """
        outputs: list[ConversationItem] = []
        for item in reversed(self.items):
            if item.kind == "function_call_output":
                outputs.append(item)
            elif item.kind == "message":
                break
        outputs.reverse()
        return outputs


# --------------------------------------------------------------------------------------------
# Decisions and usage


@dataclass(frozen=True)
class SpeakDecision:
    """Say ``text`` (audio ``audio_ms`` long) in answer to user turn ``turn``."""

    text: str
    audio_ms: int
    turn: int

    def plan(self, chunk_ms: int) -> ReplyPlan:
        return reply_plan(self.text, self.audio_ms, chunk_ms)


@dataclass(frozen=True)
class ToolCallDecision:
    """Call tool ``name`` with ``arguments`` (also as compact JSON) for user turn ``turn``."""

    name: str
    call_id: str
    arguments: dict[str, Any]
    arguments_json: str
    turn: int
    say_after: SpeakDecision | None = None


Decision = SpeakDecision | ToolCallDecision


@dataclass(frozen=True)
class UsageCounts:
    """Token counts of one response, provider-neutral (front-ends map them to their shape)."""

    input_text: int
    input_audio: int
    output_text: int
    output_audio: int

    @property
    def input_total(self) -> int:
        return self.input_text + self.input_audio

    @property
    def output_total(self) -> int:
        return self.output_text + self.output_audio

    @property
    def total(self) -> int:
        return self.input_total + self.output_total


def _text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4) if text else 0


def tool_output_text(output: str) -> str:
    """The spoken form of a tool output (a JSON string as sent on the wire).

    A JSON string is unquoted, an object reads ``key: value, ...``, a list ``a, b``; anything
    that is not JSON is spoken as is. Every scalar value of the output appears in the text.
    """
    try:
        value = json.loads(output)
    except (TypeError, ValueError):
        return output
    return _spoken(value)


def _spoken(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_spoken(item)}" for key, item in value.items())
    if isinstance(value, list):
        return ", ".join(_spoken(item) for item in value)
    return json.dumps(value)


class SimulatedModel:
    """One session's simulated model: turns, memory, and what each response does.

    ``id_factory(prefix)`` makes provider-styled ids (call ids); the default counts.
    """

    def __init__(self, script: SimScript, id_factory: Callable[[str], str] | None = None) -> None:
        self.script = script
        self.conversation = Conversation()
        #: user turns detected from audio (VAD stop or manual commit) on this session
        self.turns = 0
        self._tool_turns: set[int] = set()
        self._error_turns: set[int] = set()
        self._counter = 0
        #: makes ids such as call ids; a front-end may replace it with its provider's id style
        self.id_factory: Callable[[str], str] = id_factory or self._default_id

    def _default_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter:06d}"

    def new_vad(
        self, sample_rate: int, threshold_scale: float = 1.0, silence_ms: int | None = None
    ) -> EnergyVAD:
        """A VAD for input at ``sample_rate``; the session may scale the threshold / set silence."""
        return EnergyVAD(
            sample_rate,
            self.script.vad_threshold_rms * threshold_scale,
            self.script.silence_ms if silence_ms is None else silence_ms,
        )

    def commit_user_turn(self) -> int:
        """Count one user turn detected from audio; returns this session's audio turn count."""
        self.turns += 1
        return self.turns

    def current_turn(self) -> int:
        """The 1-based user turn a response answers: user messages in the conversation.

        Counting the conversation (not only audio turns) keeps scripts stable across a reconnect
        that replays earlier turns as text.
        """
        return self.conversation.user_turns()

    def decide(self, tools: Sequence[str], tool_choice: str | None = "auto") -> Decision:
        """What the next response does, given the tool names available to it.

        Pending tool outputs -> speak them. Else the tool script fires once per matching turn
        when the session has a matching tool and ``tool_choice`` is not ``none``. Else say
        ``script.reply_text``.
        """
        script = self.script
        turn = self.current_turn()
        outputs = self.conversation.pending_tool_outputs()
        if outputs:
            said = "; ".join(tool_output_text(item.output or "") for item in outputs)
            text = f"Here is what I found: {said}."
            return SpeakDecision(text, reply_audio_ms(text), turn)
        call = script.tool_call
        if (
            call is not None
            and tools
            and tool_choice != "none"
            and turn not in self._tool_turns
            and (call.on_turn == 0 or call.on_turn == turn)
        ):
            name = self._tool_name(call, tools, tool_choice)
            if name is not None:
                self._tool_turns.add(turn)
                arguments = dict(call.arguments)
                return ToolCallDecision(
                    name=name,
                    call_id=self.id_factory("call"),
                    arguments=arguments,
                    arguments_json=json.dumps(arguments, separators=(",", ":")),
                    turn=turn,
                    say_after=(
                        SpeakDecision(call.say_after, reply_audio_ms(call.say_after), turn)
                        if call.say_after
                        else None
                    ),
                )
        text = script.reply_text
        return SpeakDecision(text, reply_audio_ms(text, script.reply_audio_ms), turn)

    @staticmethod
    def _tool_name(
        call: ToolCallScript, tools: Sequence[str], tool_choice: str | None
    ) -> str | None:
        if tool_choice not in (None, "auto", "required", "none") and tool_choice in tools:
            return tool_choice  # a forced function wins over the script's choice
        if call.name is None:
            return tools[0]
        return call.name if call.name in tools else None

    def error_after(self, turn: int) -> str | None:
        """The scripted error code to send once after ``turn``'s first response, if any."""
        code = self.script.errors_after_turn.get(turn)
        if code is None or turn in self._error_turns:
            return None
        self._error_turns.add(turn)
        return code

    def usage(self, output_text: str, output_audio_ms: float, input_audio_ms: float) -> UsageCounts:
        """Plausible token counts: text ~4 chars/token, input audio 10/s, output audio 20/s."""
        context = " ".join(
            item.text or item.output or item.arguments or "" for item in self.conversation.items
        )
        return UsageCounts(
            input_text=_text_tokens(context) + 12,
            input_audio=math.ceil(input_audio_ms / 100),
            output_text=_text_tokens(output_text),
            output_audio=math.ceil(output_audio_ms / 50),
        )
